"""read_cxr on every real radiograph in ../shared/data/images, pydicom-data's RG1, and bad inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavarad.io.images import CxrImage, ImageReadError, detect_format, normalise_view, read_cxr

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
ALL_FILES = sorted(DATA.glob("*")) if DATA.is_dir() else []
LATERAL = {"CXR1900_IM-0584-2001.png", "CXR7_IM-2263-2001.png"}
needs_data = pytest.mark.skipif(not ALL_FILES, reason=f"shared test images not found at {DATA}")

pydicom = pytest.importorskip("pydicom")


def _rg1(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom-data has no {name}")
    return Path(path)


def _lungs_darker_than_mediastinum(a: np.ndarray) -> bool:
    """Frontal CXR anatomy: the lung fields are darker than the spine/mediastinum column between them."""
    h, w = a.shape
    rows = slice(int(0.3 * h), int(0.55 * h))
    left = a[rows, int(0.22 * w):int(0.35 * w)].mean()
    right = a[rows, int(0.65 * w):int(0.78 * w)].mean()
    middle = a[rows, int(0.46 * w):int(0.54 * w)].mean()
    return bool(middle > (left + right) / 2 + 0.08 and middle > max(left, right))


@needs_data
@pytest.mark.parametrize("path", ALL_FILES, ids=[p.name for p in ALL_FILES])
def test_every_shared_image_reads(path: Path):
    cxr = read_cxr(path)
    assert isinstance(cxr, CxrImage)
    assert cxr.image.mode == "L"
    assert cxr.array.dtype == np.float32 and cxr.array.shape == (cxr.image.size[1], cxr.image.size[0])
    assert 0.0 <= cxr.array.min() and cxr.array.max() <= 1.0
    assert cxr.array.std() > 0.1, "a radiograph has contrast"
    assert cxr.source_format == ("dicom" if path.suffix == ".dcm" else "png")
    np.testing.assert_array_equal(np.asarray(cxr.image), np.rint(cxr.array * 255).astype(np.uint8))
    json.dumps(cxr.metadata)  # metadata is plain JSON
    if cxr.source_format == "dicom":
        assert cxr.view == "PA" and cxr.is_frontal is True
    if path.name not in LATERAL and path.name != "siim_pa_flagged_monochrome1.dcm":
        assert _lungs_darker_than_mediastinum(cxr.array), f"{path.name}: lungs should be dark, mediastinum bright"


@needs_data
def test_png_8bit_is_exact_and_rgb_encoded_gray_becomes_gray():
    gray = DATA / "00000001_000.png"
    cxr = read_cxr(gray)
    np.testing.assert_array_equal(np.asarray(cxr.image), np.asarray(Image.open(gray)))
    assert cxr.metadata["color"] == "gray" and cxr.metadata["bit_depth"] == 8

    rgb_path = DATA / "CXR3_IM-1384-1001.png"
    raw = np.asarray(Image.open(rgb_path).convert("RGB")).astype(int)
    cxr = read_cxr(rgb_path)
    assert cxr.metadata["color"] == "rgb_gray"
    assert np.abs(np.asarray(cxr.image).astype(int) - raw[..., 0]).max() <= 3


@needs_data
def test_16bit_png_keeps_dynamic_range(tmp_path: Path):
    base = np.asarray(Image.open(DATA / "00000001_000.png")).astype(np.uint16)
    full = tmp_path / "full16.png"
    Image.fromarray(base * 257).save(full)  # 0..255 -> 0..65535
    twelve = tmp_path / "twelve16.png"
    Image.fromarray(base * 16 + 7).save(twelve)  # 12-bit detector values stored in a 16-bit PNG
    ref = base.astype(np.float64) / 255
    a = read_cxr(full)
    assert a.metadata["bit_depth"] == 16 and a.metadata["bits_effective"] == 16
    np.testing.assert_allclose(a.array, ref, atol=1e-6)
    b = read_cxr(twelve)
    assert b.metadata["bits_effective"] == 12
    np.testing.assert_allclose(b.array, (base * 16.0 + 7) / 4095, atol=1e-6)
    assert np.abs(b.array - ref).max() < 0.01
    # the float array holds levels that 8 bits cannot: 16-bit input with fine steps
    ramp = tmp_path / "ramp16.png"
    Image.fromarray(np.tile(np.arange(0, 65536, 64, dtype=np.uint16), (64, 1))).save(ramp)
    r = read_cxr(ramp)
    assert len(np.unique(r.array)) == 1024 and len(np.unique(np.asarray(r.image))) == 256


@needs_data
def test_jpeg_gray_rgb_and_exif_orientation(tmp_path: Path):
    src = Image.open(DATA / "00000003_000.png")
    ref = np.asarray(src, dtype=np.float32) / 255
    jpg = tmp_path / "scan.jpg"
    src.save(jpg, quality=95)
    cxr = read_cxr(jpg)
    assert cxr.source_format == "jpeg" and cxr.metadata["color"] == "gray"
    assert np.abs(cxr.array - ref).mean() < 0.01
    rgb = tmp_path / "rgb.jpg"
    src.convert("RGB").save(rgb, quality=95)
    c2 = read_cxr(rgb)
    assert c2.metadata["color"] == "rgb_gray" and np.abs(c2.array - ref).mean() < 0.01
    # a phone photo stored sideways with EXIF Orientation=6 (rotate 90 CW to display)
    rotated = tmp_path / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    src.crop((0, 0, 1024, 512)).transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    c3 = read_cxr(rotated)
    assert c3.metadata["exif_transposed"] is True and c3.image.size == (1024, 512)


@needs_data
def test_detection_is_by_content_not_extension(tmp_path: Path):
    fake = tmp_path / "actually_png.dcm"
    shutil.copy(DATA / "00000001_000.png", fake)
    assert read_cxr(fake).source_format == "png"
    dcm = tmp_path / "scan.png"
    shutil.copy(DATA / "siim_pa_jpeg_baseline.dcm", dcm)
    assert read_cxr(dcm).source_format == "dicom"
    assert detect_format((DATA / "cr_monochrome1_10bit_nopreamble.dcm").read_bytes()[:512]) == "dicom"


@needs_data
def test_monochrome1_flag_inverts_the_original_exactly():
    original = read_cxr(DATA / "siim_pa_jpeg_baseline.dcm")
    flagged = read_cxr(DATA / "siim_pa_flagged_monochrome1.dcm")
    assert original.metadata["inverted"] is False and flagged.metadata["inverted"] is True
    np.testing.assert_allclose(flagged.array, 1.0 - original.array, atol=1e-7)


@needs_data
def test_jpeg_baseline_dicom_matches_an_independent_decoder():
    """Decode the encapsulated JPEG frame with Pillow (libjpeg-turbo) instead of pydicom's plugins."""
    import io

    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(DATA / "siim_pa_jpeg_baseline.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ref = np.asarray(Image.open(io.BytesIO(frame)).convert("L"), dtype=np.float64) / 255
    ours = read_cxr(DATA / "siim_pa_jpeg_baseline.dcm").array
    diff = np.abs(ours - ref)
    assert diff.max() <= 2 / 255 and diff.mean() < 0.2 / 255


def _pydicom_reference(ds) -> np.ndarray:
    """Known-good display values: pydicom's Modality LUT + windowing, scaled by its output range, inverted."""
    from pydicom.pixels import apply_modality_lut, apply_windowing

    arr = apply_modality_lut(ds.pixel_array, ds)
    out = apply_windowing(arr, ds)
    lo, hi = 0.0, 2.0 ** int(ds.BitsStored) - 1
    if "RescaleSlope" in ds:
        lo, hi = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept), hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ref = (out - lo) / (hi - lo)
    return 1.0 - ref if ds.PhotometricInterpretation == "MONOCHROME1" else ref


def _load_forced(path: Path):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


@needs_data
def test_cr_10bit_without_preamble_matches_pydicom_path():
    path = DATA / "cr_monochrome1_10bit_nopreamble.dcm"
    cxr = read_cxr(path)
    assert cxr.metadata["has_preamble"] is False and cxr.metadata["bits_stored"] == 10
    assert cxr.metadata["window"]["source"] == "window" and cxr.metadata["photometric_interpretation"] == "MONOCHROME1"
    np.testing.assert_allclose(cxr.array, _pydicom_reference(_load_forced(path)), atol=1e-6)


def test_rg1_plain_and_jpeg2000_agree_and_match_reference():
    plain = read_cxr(_rg1("RG1_UNCR.dcm"))
    lossless = read_cxr(_rg1("RG1_J2KR.dcm"))
    lossy = read_cxr(_rg1("RG1_J2KI.dcm"))
    assert lossless.metadata["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    assert lossy.metadata["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    np.testing.assert_array_equal(plain.array, lossless.array)
    assert np.abs(plain.array - lossy.array).mean() < 0.005
    assert plain.view == "PA" and plain.metadata["bits_stored"] == 15 and plain.metadata["inverted"] is True
    np.testing.assert_allclose(plain.array, _pydicom_reference(pydicom.dcmread(_rg1("RG1_UNCR.dcm"))), atol=1e-6)
    assert _lungs_darker_than_mediastinum(plain.array)


def _cr_dataset():
    if not ALL_FILES:
        pytest.skip("shared test images not found")
    return _load_forced(DATA / "cr_monochrome1_10bit_nopreamble.dcm")


def _save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=False)
    return path


def test_rescale_slope_intercept_is_applied_before_the_window(tmp_path: Path):
    ds = _cr_dataset()
    base = read_cxr(_save(ds, tmp_path / "base.dcm")).array
    # the same display in Hounsfield-like units: value = 2 * stored - 100, window moved accordingly
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 2 * 550 - 100 + 0.5, 2 * 1024 - 1
    rescaled = read_cxr(_save(ds, tmp_path / "rescaled.dcm"))
    assert rescaled.metadata["rescale_slope"] == 2
    np.testing.assert_allclose(rescaled.array, base, atol=2e-3)
    np.testing.assert_allclose(rescaled.array, _pydicom_reference(ds), atol=1e-6)


def test_voi_lut_sequence_and_multiple_windows(tmp_path: Path):
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi
    from pydicom.sequence import Sequence

    ds = _cr_dataset()
    ds.WindowCenter, ds.WindowWidth = [550, 300], [1024, 200]  # multi-valued: the first is used
    multi = read_cxr(_save(ds, tmp_path / "multi.dcm"))
    assert multi.metadata["window"] == {"source": "window", "center": 550.0, "width": 1024.0, "function": "LINEAR",
                                        "alternatives": 2}
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 12]
    lut = (4095 * (np.arange(1024) / 1023) ** 0.5).astype(np.uint16)  # a gamma curve, 12-bit output
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    item.LUTExplanation = "gamma 0.5"
    ds.VOILUTSequence = Sequence([item])
    with_lut = read_cxr(_save(ds, tmp_path / "lut.dcm"))
    assert with_lut.metadata["window"]["source"] == "voi_lut"
    ref = 1.0 - apply_voi(ds.pixel_array, ds).astype(np.float64) / 4095
    np.testing.assert_allclose(with_lut.array, ref, atol=1e-6)


@pytest.mark.parametrize("fallback", ["auto", "minmax", "percentile", "bits"])
def test_fallback_windows_without_voi(tmp_path: Path, fallback: str):
    ds = _cr_dataset()
    del ds.WindowCenter
    del ds.WindowWidth
    cxr = read_cxr(_save(ds, tmp_path / "nowin.dcm"), fallback_window=fallback)
    src = ds.pixel_array.astype(np.float64)
    expected = {"auto": "minmax"}.get(fallback, fallback)
    assert cxr.metadata["window"]["source"] == expected
    lo, hi = {"minmax": (src.min(), src.max()), "percentile": tuple(np.percentile(src, [0.5, 99.5])),
              "bits": (0, 1023)}[expected]
    np.testing.assert_allclose(cxr.array, 1 - np.clip((src - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_multiframe_uses_first_frame_with_warning(tmp_path: Path, caplog):
    ds = _cr_dataset()
    frame = ds.pixel_array
    second = (1023 - frame).astype(np.uint16)
    ds.PixelData = np.stack([frame, second]).tobytes()
    ds.NumberOfFrames = 2
    ds["PixelData"].VR = "OW"
    with caplog.at_level(logging.WARNING):
        cxr = read_cxr(_save(ds, tmp_path / "two.dcm"))
    assert "2 frames" in caplog.text and cxr.metadata["number_of_frames"] == 2
    np.testing.assert_allclose(cxr.array, _pydicom_reference(_cr_dataset()), atol=1e-6)


def test_rgb_dicom_becomes_gray(tmp_path: Path):
    """A secondary-capture style RGB DICOM (gray replicated in 3 samples) reads like its gray source."""
    ds = _cr_dataset()
    gray8 = (ds.pixel_array >> 2).astype("uint8")  # 10-bit -> 8-bit
    ds.PixelData = np.repeat(gray8[..., None], 3, axis=-1).tobytes()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds["PixelData"].VR = "OB"
    for key in ("WindowCenter", "WindowWidth"):
        del ds[key]
    cxr = read_cxr(_save(ds, tmp_path / "rgb.dcm"))
    assert cxr.metadata["color"] == "rgb_gray" and cxr.metadata["inverted"] is False
    np.testing.assert_allclose(cxr.array, gray8 / 255.0, atol=1e-6)


def test_lateral_views_warn(tmp_path: Path, caplog):
    ds = _cr_dataset()
    ds.ViewPosition = "LL"
    with caplog.at_level(logging.WARNING, logger="llavarad.io.images"):
        cxr = read_cxr(_save(ds, tmp_path / "ll.dcm"))
    assert cxr.view == "LL" and cxr.is_frontal is False and "frontal" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llavarad.io.images"):
        png = read_cxr(DATA / "CXR7_IM-2263-2001.png", view="lateral")
    assert png.view == "LATERAL" and png.is_frontal is False and png.metadata["view_source"] == "given"
    assert "LATERAL view" in caplog.text
    assert normalise_view("postero-anterior") == ("PA", True)
    assert normalise_view(" ") == (None, None)


def test_metadata_has_no_patient_identifiers():
    ds = _cr_dataset()
    cxr = read_cxr(DATA / "cr_monochrome1_10bit_nopreamble.dcm")
    text = json.dumps(cxr.metadata)
    for key in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDate", "AccessionNumber"):
        value = str(ds.get(key, "") or "")
        assert key.lower() not in text.lower()
        if len(value) > 2:
            assert value not in text
    assert cxr.metadata["modality"] == "CR"


def test_model_processor_takes_the_image():
    from llavarad.model.processor import build_image_processor, pixel_values_for

    cxr = read_cxr(_rg1("RG1_UNCI.dcm"))
    pv = pixel_values_for([cxr.image, cxr.rgb()], build_image_processor(56))
    assert tuple(pv.shape) == (2, 3, 56, 56)
    assert float((pv[0] - pv[1]).abs().max()) == 0.0


# ---- bad input: every case names the file ---------------------------------------------------------


def _expect_error(path: Path, fragment: str, **kwargs):
    with pytest.raises(ImageReadError) as info:
        read_cxr(path, **kwargs)
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


def test_missing_empty_directory_and_wrong_types(tmp_path: Path):
    _expect_error(tmp_path / "nope.png", "no such file")
    _expect_error(tmp_path, "directory")
    (tmp_path / "empty.dcm").write_bytes(b"")
    _expect_error(tmp_path / "empty.dcm", "empty")
    (tmp_path / "notes.png").write_text("The lungs are clear.\n")
    _expect_error(tmp_path / "notes.png", "text file")
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.7\n" + bytes(600))
    _expect_error(tmp_path / "scan.pdf", "PDF")
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 3)
    _expect_error(tmp_path / "noise.bin", "not a PNG, JPEG, TIFF or DICOM")


def test_tiff_8_and_16_bit_grey_read_like_png(tmp_path: Path):
    """TIFF (Pillow): 8-bit and 16-bit grey give the same arrays as the same pixels in PNG; big-endian
    and multi-page files are read (first page, page count recorded)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (80, 96), dtype=np.uint8)
    grey16 = rng.integers(0, 4096, (80, 96), dtype=np.uint16)  # 12-bit detector values in a 16-bit container
    for name, pixels in (("g8", grey8), ("g16", grey16)):
        Image.fromarray(pixels).save(tmp_path / f"{name}.tif")
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        tif, png = read_cxr(tmp_path / f"{name}.tif"), read_cxr(tmp_path / f"{name}.png")
        assert tif.source_format == "tiff" and tif.size == (96, 80)
        np.testing.assert_array_equal(tif.array, png.array)
        assert tif.metadata["bit_depth"] == png.metadata["bit_depth"]
    Image.fromarray(grey8).save(tmp_path / "pages.tif", save_all=True, append_images=[Image.fromarray(255 - grey8)])
    paged = read_cxr(tmp_path / "pages.tif")
    assert paged.metadata["tiff_pages"] == 2
    np.testing.assert_array_equal(paged.array, read_cxr(tmp_path / "g8.png").array)
    (tmp_path / "cut.tif").write_bytes((tmp_path / "g16.tif").read_bytes()[:600])
    _expect_error(tmp_path / "cut.tif", "TIFF is truncated or corrupt")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_device_and_symlink_loop_are_named(tmp_path: Path):
    os.mkfifo(tmp_path / "pipe.png")
    _expect_error(tmp_path / "pipe.png", "is a FIFO (named pipe)")
    with pytest.raises(ImageReadError, match="character device"):
        read_cxr("/dev/zero")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    _expect_error(tmp_path / "loop.png", "symbolic link loop")


@needs_data
def test_truncated_and_corrupt_files(tmp_path: Path):
    for name, fmt in (("00000003_000.png", "PNG"), ("siim_pa_jpeg_baseline.dcm", "DICOM"),
                      ("cr_monochrome1_10bit_nopreamble.dcm", "DICOM")):
        data = (DATA / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        _expect_error(cut, fmt)
    jpg = tmp_path / "cut.jpg"
    Image.open(DATA / "00000003_000.png").save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[:4000])
    _expect_error(jpg, "JPEG is truncated or corrupt")
    bad = bytearray((DATA / "00000001_000.png").read_bytes())
    bad[200:260] = bytes(60)
    (tmp_path / "crc.png").write_bytes(bytes(bad))
    _expect_error(tmp_path / "crc.png", "corrupt")


def test_dicom_without_pixel_data(tmp_path: Path):
    ds = _cr_dataset()
    del ds.PixelData
    _expect_error(_save(ds, tmp_path / "nopix.dcm"), "no pixel data")


@needs_data
def test_size_guards(tmp_path: Path):
    _expect_error(DATA / "00000003_000.png", "exceeds max_pixels=1000000", max_pixels=1_000_000)
    _expect_error(DATA / "siim_pa_jpeg_baseline.dcm", "exceeds max_pixels", max_pixels=1_000_000)
    Image.new("L", (16, 300), 128).save(tmp_path / "icon.png")
    _expect_error(tmp_path / "icon.png", "smaller than 32 px")
    # a small PNG header that claims a huge canvas (decompression bomb) is refused before decoding
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (tmp_path / "bomb.png").write_bytes(bomb + bytes(64))
    _expect_error(tmp_path / "bomb.png", "100000x100000 = 10000000000 pixels exceeds max_pixels")
    big = tmp_path / "big.png"  # a real, highly compressible 9000 x 9000 PNG (81 MP > the 50 MP default)
    Image.new("L", (9000, 9000), 0).save(big)
    _expect_error(big, "exceeds max_pixels=50000000")


def test_blank_image_warns_once_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blank = tmp_path / "grey.png"
    Image.new("L", (64, 64), 128).save(blank)
    with caplog.at_level(logging.WARNING, logger="llavarad.io.images"):
        for _ in range(3):
            assert read_cxr(blank).array.max() == pytest.approx(128 / 255, abs=1e-6)
    hits = [r for r in caplog.records if "blank image" in r.getMessage()]
    assert len(hits) == 1 and "grey.png" in hits[0].getMessage()
