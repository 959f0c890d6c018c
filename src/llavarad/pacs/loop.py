"""The PACS loop: find chest radiograph studies without a draft from this model, draft, store an SR.

One pass (:func:`run_pass`): QIDO-RS lists CR/DX studies (optionally since a date); for each study
not finished in the local state file, the PACS is asked whether an SR series of this model is
already there (Series Description + Manufacturer, see :func:`llavarad.report_formats.sr.series_description`);
if not, WADO-RS fetches the best frontal image, the model drafts Findings, and STOW-RS stores a
Comprehensive SR in the study. :func:`run_loop` repeats passes, polling, with exponential backoff
while the PACS is unreachable.

Safe to kill at any point: the SR's UIDs are derived from the study and the model, and a study is
checked in the PACS before drafting, so a rerun after ``kill -9`` neither stores a second SR nor
skips a study. The state file (JSONL, one fsynced line per outcome) makes reruns cheap and records
per-study errors; a failed study is retried on later passes up to ``max_attempts``.

Privacy: patient identifiers go only into the SR (copied from the source image, as DICOM wants).
Logs, the state file and error messages carry Study/SOP Instance UIDs and never the patient's name
or ID: messages from libraries are scrubbed of the study's PatientName/PatientID values.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llavarad.io.manifest import JsonlWriter, read_jsonl
from llavarad.pacs._dicomweb import (
    AuthKind,
    PacsError,
    answered_by,
    find_frontal,
    iter_studies,
    make_client,
    read_secret,
    retrieve,
    store,
    value,
)
from llavarad.report_formats._common import values_never_quoted

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient

    from llavarad.generate import ReportGenerator
    from llavarad.report_formats import ModelInfo

logger = logging.getLogger(__name__)

__all__ = ["PacsConfig", "PassSummary", "StudyState", "run_loop", "run_pass"]

Status = Literal["stored", "answered", "no_frontal", "failed"]
#: Attributes whose values are scrubbed from every recorded or logged message.
_IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
                "AccessionNumber", "IssuerOfPatientID", "PatientAddress", "PatientTelephoneNumbers",
                "PatientMotherBirthName", "MedicalRecordLocator")
_FINAL: tuple[str, ...] = ("stored", "answered", "no_frontal")


@dataclass
class PacsConfig:
    """Where the PACS is and how the loop behaves; all problems are reported together."""

    dicomweb_url: str
    state_path: Path = Path("llavarad_pacs_state.jsonl")
    since: _dt.date | None = None
    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST",)  # a series without Body Part Examined is accepted
    auth: AuthKind = "none"
    auth_env: str | None = None
    auth_file: Path | None = None
    max_attempts: int = 3
    poll_seconds: float = 60.0
    max_backoff_seconds: float = 900.0
    timeout_seconds: float = 120.0
    page_size: int | None = None  # None: one QIDO-RS query per modality, no limit/offset paging

    def __post_init__(self) -> None:
        self.state_path = Path(self.state_path)
        problems = []
        if not self.dicomweb_url.startswith(("http://", "https://")):
            problems.append(f"dicomweb_url={self.dicomweb_url!r} must start with http:// or https://")
        if self.auth not in ("none", "basic", "bearer"):
            problems.append(f"auth={self.auth!r} must be none, basic or bearer")
        if not self.modalities:
            problems.append("modalities is empty; use e.g. ('CR', 'DX')")
        if self.max_attempts < 1:
            problems.append(f"max_attempts={self.max_attempts} must be >= 1")
        if self.page_size is not None and self.page_size < 1:
            problems.append(f"page_size={self.page_size} must be >= 1 (or None: no paging)")
        for name in ("poll_seconds", "max_backoff_seconds", "timeout_seconds"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} must be > 0")
        if self.since is not None and self.since > _dt.date.today():
            problems.append(f"since={self.since} is in the future; no study can match")
        if problems:
            raise PacsError("; ".join(problems))
        self.modalities = tuple(m.upper() for m in self.modalities)
        self.body_parts = tuple(b.upper() for b in self.body_parts)

    def client(self) -> DICOMwebClient:
        """A logged-in client (credentials read now from the env var or file)."""
        secret = read_secret(self.auth, self.auth_env, self.auth_file)
        return make_client(self.dicomweb_url, self.auth, secret, self.timeout_seconds)


@dataclass
class PassSummary:
    """What one pass did; ``failed`` > 0 makes ``llavarad pacs --once`` exit non-zero."""

    found: int = 0
    stored: int = 0
    answered: int = 0
    no_frontal: int = 0
    failed: int = 0
    skipped_done: int = 0
    gave_up: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def studies_per_minute(self) -> float:
        return 60.0 * self.stored / self.seconds if self.seconds > 0 else 0.0


class StudyState:
    """The local record of outcomes (JSONL; the last line of a study wins), crash-safe via JsonlWriter."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer = JsonlWriter(self.path, key=None, resume=True)  # repairs a torn last line; `last` is the index
        self.last: dict[str, dict[str, Any]] = {}
        if self.path.stat().st_size:
            for _, rec in read_jsonl(self.path):
                if isinstance(rec, dict) and "study" in rec:
                    self.last[str(rec["study"])] = rec

    def record(self, study_uid: str, status: Status, **extra: Any) -> dict[str, Any]:
        rec = {"study": study_uid, "status": status,
               "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **extra}
        self._writer.write(rec)
        self.last[study_uid] = rec
        return rec

    def close(self) -> None:
        self._writer.close()


def run_pass(client: DICOMwebClient, generator: ReportGenerator, model: ModelInfo, config: PacsConfig,
             state: StudyState) -> PassSummary:
    """One pass over the PACS (see the module docstring). Errors of one study never stop the pass;
    only a PACS that cannot be searched at all raises."""
    from llavarad.report_formats.sr import series_description

    start = time.perf_counter()
    summary = PassSummary()
    since = config.since.strftime("%Y%m%d") if config.since else None
    studies = list(iter_studies(client, config.modalities, since, config.page_size))
    summary.found = len(studies)
    description = series_description(model)
    for item in studies:
        uid = str(value(item, "StudyInstanceUID"))
        prev = state.last.get(uid, {})
        if prev.get("status") in _FINAL:
            summary.skipped_done += 1
            continue
        attempts = int(prev.get("attempts", 0))
        if prev.get("status") == "failed" and attempts >= config.max_attempts:
            summary.gave_up += 1
            continue
        private = [str(value(item, k)) for k in _IDENTIFYING if value(item, k)]
        try:
            with values_never_quoted():
                status, extra = _process(client, generator, model, config, uid, description, private)
        except Exception as exc:  # one study's failure is recorded; the pass goes on
            if _pacs_unavailable(exc):  # not this study's fault: end the pass, the loop backs off
                raise
            message = _scrub(f"{type(exc).__name__}: {exc}", private)
            state.record(uid, "failed", attempts=attempts + 1, error=message)
            summary.failed += 1
            summary.errors.append({"study": uid, "error": message})
            logger.warning("study %s failed (attempt %d of %d): %s", uid, attempts + 1, config.max_attempts, message)
            continue
        state.record(uid, status, **extra)
        setattr(summary, status, getattr(summary, status) + 1)
    summary.seconds = time.perf_counter() - start
    return summary


def _process(client: DICOMwebClient, generator: ReportGenerator, model: ModelInfo, config: PacsConfig,
             uid: str, description: str, private: list[str]) -> tuple[Status, dict[str, Any]]:
    """Draft and store one study; returns its outcome and what the state file keeps."""
    from llavarad.io.images import read_cxr
    from llavarad.report_formats import DraftReport, indication_from_dicom
    from llavarad.report_formats._common import MANUFACTURER
    from llavarad.report_formats.sr import to_sr

    existing = answered_by(client, uid, description, MANUFACTURER)
    if existing:
        logger.info("study %s: already has an SR of this model (series %s); skipped", uid, existing)
        return "answered", {"sr_series": existing}
    frontal = find_frontal(client, uid, config.modalities, config.body_parts)
    if frontal is None:
        logger.info("study %s: no frontal %s chest image; nothing to draft", uid, "/".join(config.modalities))
        return "no_frontal", {}
    source = retrieve(client, uid, frontal)
    for keyword in _IDENTIFYING:  # every identifying value of the study, for scrubbing messages
        values = source.get(keyword)
        private.extend(str(v) for v in (values if isinstance(values, (list, tuple)) else [values]) if v)
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)  # WADO-RS gives a dataset; read_cxr reads file bytes
    buffer.seek(0)
    buffer.name = f"study {uid} instance {frontal.sop_uid}"
    cxr = read_cxr(buffer)
    warnings = () if frontal.view else ("the image does not say its view; assumed frontal",)
    indication = indication_from_dicom(source)  # the worklist's reason for the exam, as the prompt wants
    findings = generator.generate(cxr.image, indication=indication)
    sr = to_sr(DraftReport(findings, indication=indication, warnings=warnings), source, model)
    store(client, sr)
    logger.info("study %s: stored SR %s (from image %s, view %s)", uid, sr.SOPInstanceUID, frontal.sop_uid,
                frontal.view or "unknown")
    return "stored", {"sr_series": str(sr.SeriesInstanceUID), "sr_sop": str(sr.SOPInstanceUID),
                      "source_sop": frontal.sop_uid, "view": frontal.view, "indication": indication is not None}


def _pacs_unavailable(exc: BaseException) -> bool:
    """A PACS that is down, overloaded or refusing us (connection error, timeout, 401/403/429/502/503/504),
    as opposed to a problem with one study; such errors must not use up the study's attempts."""
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, requests.HTTPError) and response is not None and response.status_code in (
        401, 403, 429, 502, 503, 504)


def _scrub(text: str, private: list[str]) -> str:
    """``text`` with the study's patient name/ID values (and the name's components) replaced."""
    for secret in sorted({p for v in private for p in (v, *v.split("^")) if len(p.strip()) >= 3}, key=len,
                         reverse=True):
        text = text.replace(secret, "<patient>")
    return text


def run_loop(config: PacsConfig, generator: ReportGenerator, model: ModelInfo, *, once: bool = False,
             max_passes: int | None = None, on_pass: Callable[[PassSummary], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> PassSummary:
    """Run passes until ``once`` / ``max_passes`` says stop (forever otherwise); returns the last summary.

    Between passes it sleeps ``poll_seconds``; while the PACS is unreachable the wait doubles up to
    ``max_backoff_seconds``. With ``once``, an unreachable PACS raises :class:`PacsError` at once.
    """
    import requests

    client = config.client()
    state = StudyState(config.state_path)
    delay, passes, last = config.poll_seconds, 0, PassSummary()
    try:
        while True:
            try:
                last = run_pass(client, generator, model, config, state)
                delay = config.poll_seconds
                if on_pass:
                    on_pass(last)
            except requests.RequestException as exc:
                message = _describe_http(exc, config.dicomweb_url)
                if once:
                    raise PacsError(message) from exc
                delay = min(delay * 2, config.max_backoff_seconds)
                logger.warning("%s; next try in %.0f s", message, delay)
            passes += 1
            if once or (max_passes is not None and passes >= max_passes):
                return last
            sleep(delay)
    finally:
        state.close()


def _describe_http(exc: Exception, url: str) -> str:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {401: "check --auth and the credential", 403: "the account may not search this PACS",
                404: "check the DICOMweb root (e.g. .../dicom-web)"}.get(code, "see the PACS log")
        return f"the PACS at {url} answered HTTP {code} ({hint})"
    return f"the PACS at {url} cannot be reached ({type(exc).__name__}); is it running?"
