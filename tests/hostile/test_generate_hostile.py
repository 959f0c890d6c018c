"""generate --manifest with a hostile manifest: every bad row is one error record, good rows equal a clean run.

The image corpus covers 23 kinds of file that are not a usable radiograph (empty, text, PDF, GIF,
BMP, ZIP, gzip, JPEG 2000, WebP, random bytes, truncated PNG/JPEG/TIFF, a PNG header claiming 10^10
pixels, a 4-pixel image, signed 32-bit pixels, a DICOM with nothing in it, a folder, a FIFO, a
symlink loop, a dangling symlink, a missing file, /dev/zero, an unreadable file).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, fragment the error message must hold)."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    good = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8))
    good.save(folder / "whole.png")
    good.save(folder / "whole.jpg")
    good.save(folder / "whole.tif")
    png, jpg, tif = ((folder / f"whole.{e}").read_bytes() for e in ("png", "jpg", "tif"))
    files: dict[str, tuple[bytes | None, str]] = {
        "empty.png": (b"", "empty"),
        "text.png": (b"The lungs are clear.\n" * 10, "text file"),
        "doc.pdf": (b"%PDF-1.7\n" + bytes(600), "PDF"),
        "anim.gif": (b"GIF89a" + bytes(600), "GIF"),
        "bitmap.bmp": (b"BM" + bytes(600), "BMP"),
        "bundle.zip": (b"PK\x03\x04" + bytes(600), "ZIP"),
        "packed.gz": (b"\x1f\x8b" + bytes(600), "gzip"),
        "raw.jp2": (b"\x00\x00\x00\x0cjP  " + bytes(600), "JPEG 2000"),
        "pic.webp": (b"RIFF" + bytes(600), "RIFF"),
        "noise.bin": (bytes(range(256)) * 3, "unrecognised binary"),
        "cut.png": (png[: len(png) // 2], "truncated or corrupt"),
        "cut.jpg": (jpg[: len(jpg) // 2], "truncated or corrupt"),
        "cut.tif": (tif[:300], "truncated or corrupt"),
        "bomb.png": (_png_header_only(100_000, 100_000), "exceeds max_pixels"),
        "dicm.dcm": (bytes(128) + b"DICM" + bytes(64), "DICOM"),
    }
    out: dict[str, tuple[Path, str]] = {}
    for name, (data, fragment) in files.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, fragment)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "icon.png")
    out["icon.png"] = (folder / "icon.png", "smaller than")
    Image.fromarray(np.full((64, 64), -5, np.int32)).save(folder / "signed.tif")
    out["signed.tif"] = (folder / "signed.tif", "signed")
    (folder / "a_folder.png").mkdir()
    out["a_folder.png"] = (folder / "a_folder.png", "directory")
    os.mkfifo(folder / "pipe.png")
    out["pipe.png"] = (folder / "pipe.png", "FIFO")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    out["loop.png"] = (folder / "loop.png", "symbolic link loop")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    out["dangling.png"] = (folder / "dangling.png", "does not exist")
    out["missing.png"] = (folder / "missing.png", "no such file")
    out["zero"] = (Path("/dev/zero"), "character device")
    return out


def _good_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(2)
    paths = []
    for i in range(n):
        path = folder / f"good{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks (POSIX)")
def test_hostile_manifest_gives_one_error_record_per_bad_row(run, tiny_model_dir, tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    assert len(corpus) == 23
    good = _good_images(tmp_path, 3)
    clean_lines = [json.dumps({"id": f"ok{i}", "image": str(p), "indication": "Cough."}) for i, p in enumerate(good)]
    (tmp_path / "clean.jsonl").write_text("\n".join(clean_lines) + "\n")
    hostile = [clean_lines[0], "{not json", json.dumps({"id": "surrogate", "image": "x.png"}).replace("x.png", "\\ud800"),
               "[" * 5000 + "]" * 5000, clean_lines[1],
               json.dumps({"id": "long", "image": str(good[0]), "indication": "Shortness of breath. " * 150_000}),
               json.dumps({"id": "ok0", "image": str(good[1])}),  # a repeated id
               "\ufeffnot a BOM at line start", "\x00\x00"]
    hostile += [json.dumps({"id": name, "image": str(path)}) for name, (path, _) in corpus.items()]
    hostile.append(clean_lines[2])
    (tmp_path / "hostile.jsonl").write_text("\n".join(hostile) + "\n", encoding="utf-8", errors="surrogatepass")
    common = ["--model", tiny_model_dir, "--max-new-tokens", 6, "--batch-size", 4, "--device", "cpu"]
    assert run("generate", "--manifest", tmp_path / "clean.jsonl", "--out", tmp_path / "clean_out.jsonl", *common).rc == 0
    r = run("generate", "--manifest", tmp_path / "hostile.jsonl", "--out", tmp_path / "out.jsonl", *common)
    assert r.rc == 1
    clean, got = _rows(tmp_path / "clean_out.jsonl"), _rows(tmp_path / "out.jsonl")
    for rid in clean:  # good rows: byte-identical predictions to the clean run
        assert got[rid]["prediction"] == clean[rid]["prediction"] and got[rid]["error"] is None
    for name, (path, fragment) in corpus.items():
        assert got[name]["prediction"] is None and fragment in got[name]["error"], (name, got[name]["error"])
        assert str(path) in got[name]["error"]
    assert "not valid JSON" in got["line-2"]["error"] and "lone surrogate" in got["line-3"]["error"]
    assert "nested deeper" in got["line-4"]["error"] and "NUL" in got["line-9"]["error"]
    assert got["long"]["error"] is None and "indication cut to 512 tokens" in got["long"]["warning"]
    assert len(got["long"]["indication"]) < 20_000
    assert "duplicate id 'ok0'" in r.err


def test_long_indication_as_error_and_output_guards(run, tiny_model_dir, tmp_path):
    from llavarad.generate import GenerationSettings, IndicationTooLongError, cap_indication
    from llavarad.model.build import load_model

    tok = load_model(tiny_model_dir, device="cpu").tokenizer
    strict = GenerationSettings(max_indication_tokens=8, long_indication="error")
    with pytest.raises(IndicationTooLongError, match="max_indication_tokens=8"):
        cap_indication(tok, "word " * 100, strict)
    text, note = cap_indication(tok, "word " * 100, GenerationSettings(max_indication_tokens=8))
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == 8 and "cut to 8 tokens" in note
    assert cap_indication(tok, "Cough.", strict) == ("Cough.", None)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": "x.png"}) + "\n")
    r = run("generate", "--manifest", manifest, "--out", manifest, "--model", tiny_model_dir)
    assert r.rc == 1 and "is the input" in r.err and manifest.read_text().startswith('{"id": "a"')
    r = run("generate", "--manifest", manifest, "--out", tmp_path, "--model", tiny_model_dir)
    assert r.rc != 0 and "Traceback" not in r.err
    r = run("generate", "x.png", "--model", tiny_model_dir, "--device", "banana")
    assert r.rc == 1 and "device 'banana' is not a torch device" in r.err
