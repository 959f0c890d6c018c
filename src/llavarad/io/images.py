"""Chest X-ray input: PNG, JPEG and DICOM files -> one gray image ready for the model.

:func:`read_cxr` detects the file type from its content (magic bytes, never the extension), renders
it for display (DICOM: Modality LUT, VOI LUT or window, MONOCHROME1 inversion; see
:mod:`llavarad.io._dicom`) and returns a :class:`CxrImage` holding both the 8-bit gray ``PIL``
image the model's processor takes and the float array before quantisation. Every failure raises
:class:`ImageReadError` naming the file and what to do.

Example::

    from llavarad.io.images import read_cxr
    cxr = read_cxr("study/1.dcm")
    cxr.image          # PIL "L" image, lungs dark, bones bright
    cxr.view, cxr.is_frontal, cxr.metadata["window"]
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from llavarad.errors import LlavaradError
from llavarad.io._dicom import DicomRenderError, FallbackWindow, normalise_view, render_dicom

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)
_BLANK_WARNED: set[str] = set()

__all__ = ["CxrImage", "DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE", "ImageReadError", "SourceFormat", "detect_format",
           "normalise_view", "read_cxr"]

SourceFormat = Literal["png", "jpeg", "dicom", "tiff"]

#: Refuse images with more pixels than this (a decompression-bomb guard); the largest detector
#: panels are about 4300 x 4300 = 18.5 MP.
DEFAULT_MAX_PIXELS = 50_000_000
#: Refuse images smaller than this on a side: icons and thumbnails, not radiographs.
DEFAULT_MIN_SIDE = 32

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")  # little- and big-endian classic TIFF (BigTIFF is not read)
# Well-known signatures of things people feed by mistake, for a better error than "unknown type".
_OTHER_MAGIC = {
    b"%PDF": "a PDF document", b"GIF8": "a GIF image",
    b"BM": "a BMP image", b"PK\x03\x04": "a ZIP archive", b"\x1f\x8b": "a gzip archive",
    b"\x00\x00\x00\x0cjP  ": "a JPEG 2000 file (wrap it in DICOM or convert it to PNG)",
    b"RIFF": "a RIFF (e.g. WebP) file",
}


class ImageReadError(LlavaradError, ValueError):
    """An image file that cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class CxrImage:
    """A chest radiograph ready for the model.

    ``image`` is 8-bit gray (PIL mode ``"L"``), ``(height, width)``, bright = dense (bone). ``array``
    is the same rendering as float32 ``(height, width)`` in [0, 1] before 8-bit quantisation (keeps
    the full dynamic range of 10-16-bit sources). ``view`` is a canonical label (``PA``, ``AP``,
    ``LATERAL``, ``LL``, ...) or None when unknown; ``is_frontal`` is None when the view is unknown.
    ``metadata`` holds technical facts only (format, bit depth, photometric interpretation, window
    used, modality, ...), never patient identifiers.
    """

    image: Image.Image
    array: np.ndarray
    view: str | None
    is_frontal: bool | None
    source_format: SourceFormat
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels, as PIL reports it."""
        return self.image.size

    def rgb(self) -> Image.Image:
        """The image as 3-channel RGB (gray replicated), for tools that insist on RGB."""
        return self.image.convert("RGB")


def detect_format(head: bytes) -> SourceFormat | None:
    """The format of a file from its first bytes (at least 132), or None when not PNG/JPEG/TIFF/DICOM."""
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":  # before TIFF: a DICOM preamble may hold a TIFF header
        return "dicom"
    if head.startswith(_TIFF_MAGIC):
        return "tiff"
    # DICOM without the 128-byte preamble starts directly with a data element of group 0002 (file
    # meta) or 0008 (identifying module), little or big endian, and a small element number.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        elem = int.from_bytes(head[2:4], "little" if head[:2] in (b"\x02\x00", b"\x08\x00") else "big")
        if elem < 0x0200:
            return "dicom"
    return None


def _describe_unknown(head: bytes) -> str:
    for magic, what in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return what
    sample = head[:64]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "a text file"
    return "an unrecognised binary file"


def read_cxr(path: str | os.PathLike | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
             view: str | None = None, fallback_window: FallbackWindow = "auto") -> CxrImage:
    """Read a chest radiograph (PNG, JPEG or DICOM; type detected from content) for the model.

    ``view`` supplies the view when the file has none (PNG/JPEG; e.g. the manifest's ``view``); a
    DICOM ViewPosition takes precedence. Lateral views are read but logged as a warning, as the
    model was trained on frontal views. ``fallback_window`` applies to DICOM without a VOI LUT or
    window (see :func:`llavarad.io._dicom.render_dicom`).

    ``path`` may also be an open binary file (e.g. ``io.BytesIO`` of an HTTP upload): it is read in
    memory, nothing touches the disk, and messages call it by its ``name`` attribute or ``upload``.

    Raises :class:`ImageReadError` for a missing/empty/unreadable file, an unsupported type, a
    truncated or corrupt image, DICOM without pixel data, and images outside
    ``[min_side, max_pixels]``.
    """
    if not isinstance(path, (str, os.PathLike)):
        return _read_source(path, Path(str(getattr(path, "name", "") or "upload")), max_pixels, min_side, view,
                            fallback_window)
    from llavarad.errors import InputError
    from llavarad.io.text import check_regular_file

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise ImageReadError(p, "no such file; check the path (relative paths in a manifest are relative to it)")
    try:  # a FIFO, a device, a folder or a symlink loop is named as what it is, and never read
        check_regular_file(p, "image file")
    except InputError as exc:
        raise ImageReadError(p, str(exc).removeprefix(f"{p}: ")) from exc
    try:
        with p.open("rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise ImageReadError(p, f"cannot be read ({exc.strerror or exc}); check its permissions") from exc
    return _read_source(p, p, max_pixels, min_side, view, fallback_window, head)


def _read_source(src: Path | BinaryIO, p: Path, max_pixels: int, min_side: int, view: str | None,
                 fallback_window: FallbackWindow, head: bytes | None = None) -> CxrImage:
    """``read_cxr`` after the path checks: ``src`` is the path or an open binary file, ``p`` its name."""
    if head is None:
        src.seek(0)
        head = src.read(512)
        src.seek(0)
    if not head:
        raise ImageReadError(p, "is empty (0 bytes); the copy or download probably failed")
    fmt = detect_format(head)
    if fmt is None:
        raise ImageReadError(p, f"is {_describe_unknown(head)}, not a PNG, JPEG, TIFF or DICOM radiograph")

    if fmt == "dicom":
        array, file_view, meta = _read_dicom(src, p, max_pixels, min_side, fallback_window)
    else:
        array, meta = _read_pil(src, p, fmt, max_pixels, min_side)
        file_view = None
    raw_view = file_view or view
    canon, is_frontal = normalise_view(raw_view)
    meta["view_source"] = "file" if file_view else "given" if view else None
    if is_frontal is False:
        logger.warning("%s: %s view; the model was trained on frontal (PA/AP) views, so findings may be poor",
                       p.name, canon)
    image = _to_pil_gray(array)
    return CxrImage(image=image, array=array, view=canon, is_frontal=is_frontal, source_format=fmt,
                    metadata={"source_format": fmt, **meta}, path=str(p) if isinstance(src, Path) else None)


def _to_pil_gray(array: np.ndarray) -> Image.Image:
    from PIL import Image as _Image

    q = np.multiply(array, np.float32(255.0), dtype=np.float32)
    np.rint(q, out=q)
    np.clip(q, 0, 255, out=q)
    return _Image.fromarray(q.astype(np.uint8))  # uint8 2-D -> mode "L"


def _read_dicom(src: Path | BinaryIO, p: Path, max_pixels: int, min_side: int, fallback_window: FallbackWindow):
    from pydicom.errors import InvalidDicomError

    try:
        return render_dicom(src, max_pixels=max_pixels, min_side=min_side, fallback_window=fallback_window)
    except DicomRenderError as exc:
        raise ImageReadError(p, f"DICOM: {exc}") from exc
    except InvalidDicomError as exc:
        raise ImageReadError(p, f"is not a valid DICOM file ({exc})") from exc
    except MemoryError as exc:
        raise ImageReadError(p, "DICOM pixel data too large to decode in memory") from exc
    except Exception as exc:  # pydicom/codec errors come as many types; name the file and keep the cause
        raise ImageReadError(p, f"DICOM could not be decoded ({type(exc).__name__}: {exc}); the file may be "
                                "truncated or use an unsupported compression") from exc


def _effective_bits(max_value: int, container_bits: int) -> int:
    """Bits actually used by 16-bit gray data: many exports store 10-12-bit detector values in 16-bit
    PNGs, which divided by 65535 would render almost black."""
    if container_bits <= 8 or max_value > 4095:
        return container_bits
    return max(8, int(max_value).bit_length())


def _read_pil(src: Path | BinaryIO, p: Path, fmt: SourceFormat, max_pixels: int,
              min_side: int) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image as _Image
    from PIL import ImageOps

    meta: dict[str, Any] = {}
    if fmt == "png":
        # The size is in the IHDR chunk at a fixed offset: check it before any decoder touches the file.
        if isinstance(src, Path):
            with src.open("rb") as fh:
                head = fh.read(24)
        else:
            src.seek(0)
            head = src.read(24)
            src.seek(0)
        if len(head) == 24 and head[12:16] == b"IHDR":
            w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if w * h > max_pixels:
                raise ImageReadError(p, f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} "
                                        "(raise max_pixels if this image is genuine)")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces PIL's warning; PIL's hard limit still applies
            warnings.simplefilter("ignore", _Image.DecompressionBombWarning)
            with _Image.open(src) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageReadError(p, f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} "
                                            "(raise max_pixels if this image is genuine)")
                if min(w, h) < min_side:
                    raise ImageReadError(p, f"{w}x{h} is smaller than {min_side} px on a side: not a radiograph")
                meta.update(mode=img.mode, width=w, height=h)
                if fmt == "tiff" and getattr(img, "n_frames", 1) > 1:  # a multi-page TIFF: the first page is read
                    meta["tiff_pages"] = img.n_frames
                img.load()
                rotate = fmt == "jpeg" or (fmt == "tiff" and img.getexif().get(0x0112, 1) != 1)  # TIFF Orientation
                transposed = ImageOps.exif_transpose(img) if rotate else img
                meta["exif_transposed"] = transposed is not img
                array, info = _pil_to_unit(transposed, p)
    except ImageReadError:
        raise
    except _Image.DecompressionBombError as exc:
        raise ImageReadError(p, f"refused as a possible decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(p, f"{fmt.upper()} is truncated or corrupt ({exc}); re-export the image") from exc
    meta.update(info)
    if float(array.max()) <= float(array.min()) and str(p) not in _BLANK_WARNED:
        # Once per file: a training loop rereads the same image every epoch (the blank-image control
        # of the demo reads one grey file thousands of times).
        if len(_BLANK_WARNED) < 10_000:
            _BLANK_WARNED.add(str(p))
        logger.warning("%s: every pixel has the same value (%.3f): a blank image", p.name, float(array.min()))
    return array, meta


def _pil_to_unit(img: Image.Image, p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A loaded PIL image -> float32 gray in [0, 1] plus facts about the conversion."""
    mode = img.mode
    info: dict[str, Any] = {}
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        raw = np.asarray(img)
        if raw.dtype.kind == "i" and raw.size and int(raw.min()) < 0:
            raise ImageReadError(p, f"signed 32-bit pixels (min {int(raw.min())}) are not a radiograph export")
        container = 16 if mode.startswith("I;16") or int(raw.max(initial=0)) < 65536 else 32
        bits = _effective_bits(int(raw.max(initial=0)), container)
        info.update(bit_depth=container, bits_effective=bits, color="gray")
        return (raw.astype(np.float64) / float(2**bits - 1)).clip(0, 1).astype(np.float32), info
    if mode == "F":
        raw = np.asarray(img, dtype=np.float64)
        lo, hi = float(raw.min()), float(raw.max())
        info.update(bit_depth=32, color="gray", window={"source": "minmax", "low": lo, "high": hi})
        return ((raw - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32), info
    if mode in ("1", "L"):
        info.update(bit_depth=1 if mode == "1" else 8, color="gray")
        return np.asarray(img.convert("L"), dtype=np.float32) * np.float32(1 / 255), info
    if mode in ("LA", "La"):
        info.update(bit_depth=8, color="gray", dropped_alpha=True)
        return (np.asarray(img.getchannel(0), dtype=np.float32) / 255.0), info
    # RGB, RGBA, P (palette), CMYK, YCbCr, ...: to RGB, then gray.
    rgb_img = img.convert("RGB")
    rgb = np.asarray(rgb_img, dtype=np.int16)
    spread = int(max(np.abs(rgb[..., 0] - rgb[..., 1]).max(), np.abs(rgb[..., 1] - rgb[..., 2]).max())) if rgb.size else 0
    # JPEG chroma noise makes gray-in-RGB channels differ by a few levels; more means real colour.
    is_gray = spread <= 6
    info.update(bit_depth=8, color="rgb_gray" if is_gray else "rgb_color")
    if mode in ("RGBA", "PA", "LA"):
        info["dropped_alpha"] = True
    if not is_gray:
        logger.warning("%s: a colour image (channels differ by up to %d levels); converted to gray by luma",
                       p.name, spread)
    gray = np.asarray(rgb_img.convert("L"), dtype=np.float32)  # ITU-R 601 luma
    gray *= np.float32(1 / 255)
    return gray, info
