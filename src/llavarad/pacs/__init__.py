"""DICOMweb loop against a PACS: pull new chest radiographs, draft Findings, push back a DICOM SR.

Needs the ``pacs`` extra (``dicomweb-client``, ``highdicom``). See :mod:`llavarad.pacs.loop` and
docs/integration.md.
"""

from __future__ import annotations

from llavarad.pacs._dicomweb import PacsError, make_client, read_secret
from llavarad.pacs.loop import PacsConfig, PassSummary, StudyState, run_loop, run_pass

__all__ = ["PacsConfig", "PacsError", "PassSummary", "StudyState", "make_client", "read_secret", "run_loop", "run_pass"]
