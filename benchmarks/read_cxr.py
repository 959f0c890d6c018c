"""Reading speed of `read_cxr` per input kind, against a bare decode of the same file in the same run.

The bare decode is what any loader must pay (Pillow for PNG, pydicom's pixel_array for DICOM); the ratio
shows what rendering (Modality LUT, window, MONOCHROME1 inversion, checks, 8-bit image) adds on top.

Run: ``python benchmarks/read_cxr.py``
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"


def bare_decode(path: Path) -> np.ndarray:
    if path.suffix == ".dcm":
        import pydicom
        from pydicom.pixels import pixel_array

        ds = pydicom.dcmread(path, force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            from pydicom.dataset import FileMetaDataset
            from pydicom.uid import ImplicitVRLittleEndian

            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        return pixel_array(ds, index=0)
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


def timed(fn, path: Path, repeats: int) -> float:
    fn(path)  # warm-up (imports, codec initialisation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    from pydicom.data import get_testdata_file

    from llavarad.io.images import read_cxr

    files = {
        "png_8bit_1024": DATA / "00000003_000.png",
        "png_rgb_gray_512": DATA / "CXR3_IM-1384-1001.png",
        "dicom_jpeg_baseline_1024": DATA / "siim_pa_jpeg_baseline.dcm",
        "dicom_10bit_mono1_nopreamble_440": DATA / "cr_monochrome1_10bit_nopreamble.dcm",
        "dicom_15bit_raw_1955x1841": Path(get_testdata_file("RG1_UNCR.dcm")),
        "dicom_j2k_lossless_1955x1841": Path(get_testdata_file("RG1_J2KR.dcm")),
    }
    worst = 0.0
    print(f"{'input':36s} {'read_cxr ms':>12s} {'bare decode ms':>15s} {'ratio':>6s}")
    results = {}
    for name, path in files.items():
        repeats = 3 if "j2k" in name else 10
        ours = timed(read_cxr, path, repeats)
        bare = timed(bare_decode, path, repeats)
        results[name] = ours
        worst = max(worst, ours / bare)
        print(f"{name:36s} {ours:12.1f} {bare:15.1f} {ours / bare:6.2f}")
    print(f"RESULT read_cxr_png_1024_ms {results['png_8bit_1024']:.1f} ms goal=<=50")
    print(f"RESULT read_cxr_dicom_j2k_3_6mp_ms {results['dicom_j2k_lossless_1955x1841']:.0f} ms goal=<=1500")
    print(f"RESULT read_cxr_overhead_vs_bare_decode_worst {worst:.2f} x goal=<=3")


if __name__ == "__main__":
    main()
