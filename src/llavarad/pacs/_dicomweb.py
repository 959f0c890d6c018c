"""The DICOMweb side of the PACS loop, all through ``dicomweb-client``: login, QIDO-RS searches,
WADO-RS retrieval of the frontal image, STOW-RS of the SR. No hand-written HTTP."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llavarad.errors import LlavaradError

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

AuthKind = Literal["none", "basic", "bearer"]


class PacsError(LlavaradError, RuntimeError):
    """The PACS cannot be used as configured (unreachable, refused login, rejected store, bad settings)."""


def read_secret(kind: AuthKind, env: str | None, file: str | Path | None) -> str | None:
    """The credential for ``kind`` from the environment variable ``env`` or the first line of ``file``.

    basic: ``user:password``; bearer: the token. Messages name the variable or file, never the value.
    """
    if kind == "none":
        if env or file:
            raise PacsError("--auth-env/--auth-file given without --auth basic|bearer: say which kind of login")
        return None
    if (env is None) == (file is None):
        raise PacsError(f"--auth {kind} needs exactly one of --auth-env VAR or --auth-file PATH")
    if env is not None:
        value = os.environ.get(env, "")
        if not value.strip():
            raise PacsError(f"environment variable {env} is not set or empty; export the {kind} credential there")
    else:
        try:
            value = Path(file).read_text(encoding="utf-8").splitlines()[0] if Path(file).stat().st_size else ""
        except OSError as exc:
            raise PacsError(f"credential file {file} cannot be read ({exc.strerror or exc})") from exc
        if not value.strip():
            raise PacsError(f"credential file {file} is empty; put the {kind} credential on its first line")
    value = value.strip()
    if kind == "basic" and ":" not in value:
        raise PacsError(f"the basic credential from {env or file} must be 'user:password'")
    return value


def make_client(url: str, kind: AuthKind = "none", secret: str | None = None, timeout: float = 120.0) -> DICOMwebClient:
    """A ``DICOMwebClient`` for ``url`` logged in with basic (``user:password``) or bearer (token) auth."""
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:
        raise PacsError(f"{exc.name} is not installed: pip install 'llavarad[pacs]'") from exc

    session = requests.Session()
    if kind == "basic" and secret:
        user, _, password = secret.partition(":")
        session.auth = (user, password)
    elif kind == "bearer" and secret:
        session.headers["Authorization"] = f"Bearer {secret}"
    client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=timeout)
    # The loop retries on its own terms (failed studies on later passes, backoff while the PACS is
    # down); dicomweb-client's own retry would stall every call to a stopped PACS for ~30 s.
    client.set_http_retry_params(retry=False)
    return client


def value(item: dict[str, Any], keyword: str) -> Any:
    """First value of ``keyword`` in a DICOM JSON object (QIDO result or WADO metadata), or None."""
    from pydicom.datadict import tag_for_keyword

    values = item.get(f"{tag_for_keyword(keyword):08X}", {}).get("Value") or [None]
    first = values[0]
    return first.get("Alphabetic") if isinstance(first, dict) else first


def iter_studies(client: DICOMwebClient, modalities: Sequence[str], since: str | None,
                 page_size: int | None) -> Iterator[dict[str, Any]]:
    """QIDO-RS: studies holding any of ``modalities`` (one query each), each study once.

    ``page_size`` None asks for all matches at once (the PACS's own result limit applies); a number
    pages with limit/offset. Some PACS ignore ``offset`` (Orthanc 1.10 with DICOMweb 1.7 answers an
    empty page to any offset when ModalitiesInStudy is given): a full first page followed by an
    empty one is logged as a warning, since studies may then be missed.
    """
    seen: set[str] = set()
    for modality in modalities:
        filters: dict[str, Any] = {"ModalitiesInStudy": modality}
        if since:
            filters["StudyDate"] = f"{since}-"
        offset = 0
        while True:
            page = client.search_for_studies(search_filters=filters, limit=page_size, offset=offset or None,
                                             fields=["PatientID", "PatientName", "PatientBirthDate", "StudyDate"])
            for item in page:
                uid = value(item, "StudyInstanceUID")
                if uid and uid not in seen:
                    seen.add(uid)
                    yield item
            if page_size is None or len(page) < page_size:
                if offset == page_size and not page:
                    logger.warning("QIDO-RS: a full page of %d %s studies, then nothing at offset %d: the PACS may "
                                   "ignore offset, so studies can be missed; run without a page size or narrow "
                                   "the search with --since", page_size, modality, offset)
                break
            offset += len(page)


def answered_by(client: DICOMwebClient, study_uid: str, description: str, manufacturer: str) -> str | None:
    """The Series Instance UID of an SR series of this model in the study (QIDO-RS), or None."""
    for series in client.search_for_series(study_uid, search_filters={"Modality": "SR"},
                                           fields=["SeriesDescription", "Manufacturer"]):
        made_by = value(series, "Manufacturer")
        if value(series, "SeriesDescription") == description and made_by in (None, manufacturer):
            return value(series, "SeriesInstanceUID")
    return None


@dataclass(frozen=True)
class Frontal:
    """The image a draft is made from: its UIDs and view (PA, AP, or None when the file says nothing)."""

    series_uid: str
    sop_uid: str
    view: str | None


def find_frontal(client: DICOMwebClient, study_uid: str, modalities: Sequence[str],
                 body_parts: Sequence[str]) -> Frontal | None:
    """The best frontal image of a study (WADO-RS metadata, no pixels): PA, then AP, then unknown view.

    Series whose Body Part Examined is given and not in ``body_parts`` are not chest images; lateral
    views are never chosen. None when the study has no such image.
    """
    from llavarad.io.images import normalise_view

    best: tuple[int, Frontal] | None = None
    for modality in modalities:
        for series in client.search_for_series(study_uid, search_filters={"Modality": modality}):
            series_uid = value(series, "SeriesInstanceUID")
            for meta in client.retrieve_series_metadata(study_uid, series_uid):
                part = str(value(meta, "BodyPartExamined") or "").strip().upper()
                if (part and part not in body_parts) or value(meta, "Rows") is None:
                    continue  # another body part, or not an image (e.g. a presentation state)
                view, is_frontal = normalise_view(value(meta, "ViewPosition"))
                if is_frontal is False:
                    continue
                rank = {"PA": 0, "AP": 1}.get(view or "", 2)
                if best is None or rank < best[0]:
                    best = (rank, Frontal(series_uid, value(meta, "SOPInstanceUID"), view))
    return best[1] if best else None


def retrieve(client: DICOMwebClient, study_uid: str, frontal: Frontal) -> Dataset:
    """WADO-RS: the whole instance (pixels included)."""
    return client.retrieve_instance(study_uid, frontal.series_uid, frontal.sop_uid)


def store(client: DICOMwebClient, sr: Dataset) -> None:
    """STOW-RS one SR; a PACS that lists it as failed raises :class:`PacsError`."""
    response = client.store_instances([sr])
    failed = response.get("FailedSOPSequence") or []
    if failed:
        reason = failed[0].get("FailureReason", "unknown")
        raise PacsError(f"the PACS refused the SR {sr.SOPInstanceUID} (failure reason {reason})")
