"""Draft reports in the formats a hospital's systems take: FHIR R4 DiagnosticReport and DICOM SR.

``to_fhir`` needs the ``fhir.resources`` package and ``to_sr`` needs ``highdicom`` (the ``pacs`` extra);
both are imported only when called. See docs/integration.md.
"""

from __future__ import annotations

from llavarad.report_formats._common import (
    DraftReport,
    ModelInfo,
    ReportFormatError,
    indication_from_dicom,
    read_source_header,
)

__all__ = ["DraftReport", "ModelInfo", "ReportFormatError", "indication_from_dicom", "read_source_header", "to_fhir",
           "to_fhir_json", "to_sr"]


def __getattr__(name: str):
    if name == "to_sr":
        from llavarad.report_formats.sr import to_sr

        return to_sr
    if name in ("to_fhir", "to_fhir_json"):
        from llavarad.report_formats import fhir

        return getattr(fhir, name)
    raise AttributeError(name)
