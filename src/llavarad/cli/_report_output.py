"""``generate --format fhir|sr``: one drafted image as a FHIR DiagnosticReport line or a DICOM SR file."""

from __future__ import annotations

from pathlib import Path

from llavarad.report_formats import (
    DraftReport,
    ModelInfo,
    ReportFormatError,
    read_source_header,
)


def model_info(model_dir: Path, settings, bundle) -> ModelInfo:
    """Name, version and the generation settings recorded in every SR (Algorithm Parameters) and FHIR Device."""
    recorded = {"max_new_tokens": settings.max_new_tokens, "prompt_format": settings.prompt_format or bundle.prompt_format,
                "decoding": "greedy" if settings.num_beams == 1 else f"beam{settings.num_beams}"}
    return ModelInfo.from_model_dir(model_dir, settings=recorded, bundle=bundle)


def render(fmt: str, image: Path, findings: str, indication: str | None, model: ModelInfo,
           out_dir: Path | None) -> str:
    """``fhir``: the DiagnosticReport JSON (one line; subject and study from the DICOM tags when the
    image is DICOM). ``sr``: writes ``OUT_DIR/<SOP Instance UID>.dcm`` and returns a line naming it.
    Raises :class:`ReportFormatError` (e.g. ``sr`` of a PNG: no study to attach to)."""
    report = DraftReport(findings, indication=indication)
    if fmt == "fhir":
        from llavarad.report_formats.fhir import to_fhir_json

        try:
            source = read_source_header(image)
        except ReportFormatError:
            source = None  # PNG/JPEG: a report without subject or study references
        return to_fhir_json(report, source, model)
    if fmt == "sr":
        from llavarad.report_formats.sr import to_sr

        if out_dir is None:
            raise ReportFormatError("--format sr writes files: give --out-dir DIR")
        sr = to_sr(report, read_source_header(image), model)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{sr.SOPInstanceUID}.dcm"
        tmp = target.with_suffix(".dcm.tmp")
        sr.save_as(tmp, enforce_file_format=True)
        tmp.replace(target)
        return f"{image} -> {target}"
    raise ReportFormatError(f"unknown format {fmt!r}; use jsonl, fhir or sr")
