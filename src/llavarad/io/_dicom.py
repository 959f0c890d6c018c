"""DICOM rendering for :func:`llavarad.io.images.read_cxr`: stored values -> display values in [0, 1].

The display pipeline follows DICOM PS3.3 C.11: decode the first frame (any transfer syntax pydicom's
plugins decode, incl. JPEG baseline and JPEG 2000 through pylibjpeg), apply the Modality LUT
(Modality LUT Sequence or Rescale Slope/Intercept), then the VOI transform (VOI LUT Sequence, else
the first Window Center/Width with its VOI LUT Function, else a fallback window), and finally invert
MONOCHROME1 so that, as in MONOCHROME2, high values are bright (bone) and low values dark (lung).

Only technical attributes are copied to the metadata (an allow-list): never patient identifiers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from llavarad.errors import LlavaradError

logger = logging.getLogger(__name__)

__all__ = ["FallbackWindow", "never_quote_dicom_values", "render_dicom", "normalise_view"]

FallbackWindow = Literal["auto", "minmax", "percentile", "bits"]

# Technical attributes worth keeping with an image; everything else (names, IDs, dates, institution,
# free text) stays in the file.
_KEEP = {
    "Modality": "modality",
    "BodyPartExamined": "body_part_examined",
    "ViewPosition": "view_position",
    "PhotometricInterpretation": "photometric_interpretation",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "HighBit": "high_bit",
    "PixelRepresentation": "pixel_representation",
    "SamplesPerPixel": "samples_per_pixel",
    "Rows": "rows",
    "Columns": "columns",
    "RescaleSlope": "rescale_slope",
    "RescaleIntercept": "rescale_intercept",
    "VOILUTFunction": "voi_lut_function",
    "PresentationLUTShape": "presentation_lut_shape",
}

_VIEW_ALIASES = {
    "POSTERO-ANTERIOR": "PA", "POSTEROANTERIOR": "PA", "PA": "PA",
    "ANTERO-POSTERIOR": "AP", "ANTEROPOSTERIOR": "AP", "AP": "AP",
    "LATERAL": "LATERAL", "LAT": "LATERAL", "LEFT LATERAL": "LL", "LL": "LL",
    "RIGHT LATERAL": "RL", "RL": "RL", "LATERO-MEDIAL": "LATERAL",
}
_FRONTAL = {"PA", "AP", "AP SUPINE", "AP AXIAL", "PA AXIAL", "AP UPRIGHT", "AP ERECT"}
_LATERAL = {"LATERAL", "LL", "RL", "RLD", "LLD", "XTABLE LATERAL", "LATERAL DECUBITUS", "RIGHT LATERAL",
            "LEFT LATERAL"}


class DicomRenderError(LlavaradError, ValueError):
    """A DICOM file that pydicom reads but that cannot be rendered (message names what is wrong)."""


def never_quote_dicom_values() -> None:
    """Turn off pydicom's value validation for the whole process.

    pydicom warns about an invalid value by quoting it (``Invalid value for VR DA: '<value>'``), and
    the values of an uploaded or archived file can be patient data. A long-running process that
    reads other people's files (the server) calls this once at start: pydicom's settings are
    process-global, so switching them per request would race between threads. Values are still
    read as the file has them; llavarad validates what it uses itself.
    """
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE


def normalise_view(value: Any) -> tuple[str | None, bool | None]:
    """Canonical view label and whether it is frontal (None when unknown).

    ``"postero-anterior"`` -> ``("PA", True)``, ``"LL"`` -> ``("LL", False)``, ``""`` -> ``(None, None)``.
    """
    if value is None:
        return None, None
    text = " ".join(str(value).replace("_", " ").upper().split())
    if not text:
        return None, None
    view = _VIEW_ALIASES.get(text, text)
    if view in _FRONTAL:
        return view, True
    if view in _LATERAL or "LAT" in view:
        return view, False
    return view, None


def _view_from_dataset(ds) -> str | None:
    view = str(ds.get("ViewPosition", "") or "").strip()
    if view:
        return view
    # Enhanced / DX objects may carry the view only as a code (SNOMED "postero-anterior", ...).
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", "") or "").strip()
        if meaning:
            return meaning
    return None


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS element."""
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str | bytes) else float(value)
    except (TypeError, ValueError, IndexError) as exc:
        raise DicomRenderError(f"unreadable window value {value!r}") from exc


def window_linear(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2-3) mapped straight to [0, 1]: float32, same shape as ``x``.

    float32 keeps 24 bits of mantissa, more than any stored pixel depth, and halves the memory traffic.
    """
    function = (function or "LINEAR").upper()
    out = np.array(x, dtype=np.float32, copy=True)  # one pass: convert + own the buffer
    if function == "SIGMOID":
        if width <= 0:
            raise DicomRenderError(f"Window Width {width} must be > 0 for SIGMOID")
        out -= np.float32(center)
        out *= np.float32(-4.0 / width)
        np.exp(out, out=out)
        out += 1
        return np.reciprocal(out, out=out)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise DicomRenderError(f"Window Width {width} must be > 0 for LINEAR_EXACT")
        lo, span = center - width / 2, float(width)
    elif function == "LINEAR":
        if width < 1:
            raise DicomRenderError(f"Window Width {width} must be >= 1 for LINEAR windowing")
        if width == 1:  # a threshold
            return (out > center - 0.5).astype(np.float32)
        lo, span = (center - 0.5) - (width - 1) / 2, width - 1.0
    else:
        raise DicomRenderError(f"VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    out -= np.float32(lo)
    out *= np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def _stored_range(ds) -> tuple[float, float]:
    """Range of stored values from Bits Stored and Pixel Representation."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality_range(ds) -> tuple[float, float]:
    """Range of Modality-LUT output values implied by the header (for 'bits' windowing)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    lo, hi = _stored_range(ds)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def _to_gray(arr: np.ndarray, ds, meta: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Colour pixel data (RGB, YBR, palette) -> ``(luma, largest possible value)``; records what was done."""
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    top = float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)  # uint8 or uint16 RGB, per the LUT descriptor's bit depth
        top = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    # pydicom's decoders already return RGB for YBR_FULL(_422) and JPEG 2000's YBR_ICT/RCT.
    rgb = arr.astype(np.float64)
    spread = float(np.max(np.abs(rgb - rgb.mean(axis=-1, keepdims=True))))
    meta["color"] = "rgb_gray" if spread <= 3 * (top + 1) / 256 else "rgb_color"
    if meta["color"] == "rgb_color":
        logger.warning("colour DICOM (%s): converted to gray by luma; a radiograph is expected", photometric)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114, top


def _check_image_header(ds, max_pixels: int, min_side: int) -> tuple[int, int]:
    """``(rows, columns)`` of an image dataset; :class:`DicomRenderError` for anything unrenderable."""
    if "PixelData" not in ds:
        kinds = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if kinds:
            raise DicomRenderError(f"{kinds[0]} (floating-point pixel data) is not supported; export integer pixels")
        sop = ds.get("SOPClassUID")
        what = f" (SOP class {sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DicomRenderError(f"no pixel data{what}: not an image (a report, a presentation state, ...)")
    for key in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if key not in ds:
            raise DicomRenderError(f"the image header has no {key}; the file is incomplete or not an image")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > max_pixels:
        raise DicomRenderError(f"{cols}x{rows} = {rows * cols} pixels exceeds max_pixels={max_pixels} "
                               f"(raise max_pixels if this image is genuine)")
    if min(rows, cols) < min_side:
        raise DicomRenderError(f"{cols}x{rows} is smaller than {min_side} px on a side: not a radiograph")
    return rows, cols


def _record_transfer_syntax(ds, meta: dict[str, Any]) -> None:
    """Put the transfer syntax into ``meta`` (and into a file meta the dataset lacks, from the
    encoding pydicom detected, so the pixel decoders know it); also whether there was a preamble."""
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    meta["has_preamble"] = bool(getattr(ds, "preamble", None))
    if tsyntax is None:
        # No file meta (no preamble / raw dataset): the encoding pydicom detected tells us the syntax.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        tsyntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        if file_meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
    meta["transfer_syntax"] = str(tsyntax)
    meta["transfer_syntax_name"] = getattr(tsyntax, "name", str(tsyntax))


def render_dicom(path: Path | BinaryIO, *, max_pixels: int, min_side: int,
                 fallback_window: FallbackWindow = "auto") -> tuple[np.ndarray, str | None, dict[str, Any]]:
    """Read a DICOM file and render its first frame for display.

    Returns ``(array, view, metadata)``: ``array`` is float32 ``(rows, columns)`` in [0, 1] with bright
    = dense (bone); ``view`` is the raw view label or None. ``fallback_window`` picks the window when
    the file has neither a VOI LUT nor a Window Center/Width: ``bits`` maps the full Bits Stored range,
    ``minmax`` the data's own range, ``percentile`` its 0.5-99.5 % range, and ``auto`` uses ``bits``
    for 8-bit data (already display-ready) and ``minmax`` otherwise.

    Raises :class:`DicomRenderError` (or pydicom's errors, which the caller wraps with the path).
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi, pixel_array

    ds = pydicom.dcmread(str(path) if isinstance(path, Path) else path, force=True)
    rows, cols = _check_image_header(ds, max_pixels, min_side)

    meta: dict[str, Any] = {_KEEP[k]: _plain(ds.get(k)) for k in _KEEP if k in ds}
    _record_transfer_syntax(ds, meta)

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    meta["number_of_frames"] = n_frames
    if n_frames > 1:
        logger.warning("%s: %d frames; using the first", getattr(path, "name", "upload"), n_frames)
    meta["frame"] = 0
    try:
        stored = pixel_array(ds, index=0)
    except NotImplementedError as exc:
        raise DicomRenderError(f"cannot decode transfer syntax {meta['transfer_syntax_name']}: {exc}") from exc
    if stored.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        stored = stored[0]  # some decoders keep a frame axis for index=0
    if stored.shape[:2] != (rows, cols):
        raise DicomRenderError(f"decoded pixels are {stored.shape}, header says {rows}x{cols}: corrupt pixel data")

    photometric = str(ds.PhotometricInterpretation).upper().strip()
    if stored.ndim == 3 or photometric == "PALETTE COLOR":
        gray, top = _to_gray(stored, ds, meta)
        lo, hi = 0.0, top
        arr = np.clip((gray - lo) / (hi - lo), 0.0, 1.0)
        meta["window"] = {"source": "bits", "low": lo, "high": hi}
        meta["inverted"] = False
        return arr.astype(np.float32), _view_from_dataset(ds), meta
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomRenderError(f"single-sample image with PhotometricInterpretation {photometric!r}: "
                               "expected MONOCHROME1 or MONOCHROME2")

    values = apply_modality_lut(stored, ds)
    arr, meta["window"] = _apply_voi(values, ds, fallback_window, apply_voi)
    # A Presentation LUT Shape of INVERSE flips the display too (rare in CXR, but it is the standard).
    invert = photometric == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        invert = not invert
    arr = np.asarray(arr, dtype=np.float32)
    if invert:
        arr = np.subtract(np.float32(1.0), arr, out=arr)
    meta["inverted"] = invert
    return arr, _view_from_dataset(ds), meta


def _apply_voi(values: np.ndarray, ds, fallback: FallbackWindow, apply_voi) -> tuple[np.ndarray, dict[str, Any]]:
    """VOI LUT sequence > first window > fallback; returns values in [0, 1] and what was used."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        depth = int(item.LUTDescriptor[2])
        # the LUT is indexed by integer values: rescaled (float) values are rounded first
        ints = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        lut_out = apply_voi(ints, ds, index=0)
        top = float(2**depth - 1)
        explanation = str(item.get("LUTExplanation", "") or "")
        return np.clip(lut_out.astype(np.float32) / np.float32(top), 0.0, 1.0), {
            "source": "voi_lut", "bits_per_entry": depth, "entries": int(item.LUTDescriptor[0] or 65536),
            "explanation": explanation, "alternatives": len(ds.VOILUTSequence)}
    if "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter not in (None, "") and ds.WindowWidth not in (None, ""):
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        n_alt = len(ds.WindowCenter) if hasattr(ds.WindowCenter, "__len__") and not isinstance(ds.WindowCenter, str) else 1
        return window_linear(values, center, width, function), {
            "source": "window", "center": center, "width": width, "function": function.upper(), "alternatives": n_alt}
    kind = fallback
    if kind == "auto":
        kind = "bits" if int(ds.get("BitsStored", 8) or 8) <= 8 and not ds.get("ModalityLUTSequence") else "minmax"
    v = np.asarray(values, dtype=np.float32)
    if kind == "bits":
        lo, hi = _modality_range(ds)
    elif kind == "minmax":
        lo, hi = float(v.min()), float(v.max())
    elif kind == "percentile":
        lo, hi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
    else:
        raise DicomRenderError(f"fallback_window {fallback!r} is not one of auto, minmax, percentile, bits")
    if hi <= lo:
        raise DicomRenderError(f"all pixels have the same value ({lo}): a blank image")
    out = v - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out), {"source": kind, "low": lo, "high": hi}


def _plain(value: Any) -> Any:
    """pydicom element values -> JSON-friendly Python values."""
    if value is None:
        return None
    if isinstance(value, int | float | str | bool):
        return value
    if hasattr(value, "__len__") and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    try:
        return float(value) if "." in str(value) else int(value)
    except (TypeError, ValueError):
        return str(value)
