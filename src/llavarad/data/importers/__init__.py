"""Importers: one module per public dataset, each reading the official release layout and
yielding :class:`~llavarad.io.manifest.ManifestRecord` objects (or :class:`ImportProblem` for rows
that cannot be read, so nothing is dropped silently).

=================  =========================================  ===============================
name               module                                     text
=================  =========================================  ===============================
mimic-cxr          :mod:`.mimic_cxr`                          report, rule-based sections
chexpert           :mod:`.chexpert`                           labels (14 observations)
brax               :mod:`.brax`                               labels (14 observations)
candid-ptx         :mod:`.candid_ptx`                         labels (3)
vindr-cxr          :mod:`.vindr`                              labels (14 box classes / 28)
object-cxr         :mod:`.objectcxr`                          label (foreign object)
padchest           :mod:`.padchest`                           Spanish report
openi              :mod:`.openi`                              report sections (XML)
=================  =========================================  ===============================

A hospital's own PACS export with its RIS or FHIR reports is imported by
:func:`llavarad.data.importers.dicom_archive.import_dicom_archive` (``llavarad data import dicom``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llavarad.data.importers._common import DatasetLayoutError, ImportProblem
from llavarad.data.importers.brax import iter_brax
from llavarad.data.importers.candid_ptx import iter_candid_ptx
from llavarad.data.importers.chexpert import iter_chexpert
from llavarad.data.importers.mimic_cxr import iter_mimic_cxr
from llavarad.data.importers.objectcxr import iter_objectcxr
from llavarad.data.importers.openi import iter_openi
from llavarad.data.importers.padchest import iter_padchest
from llavarad.data.importers.vindr import iter_vindr
from llavarad.io.manifest import ManifestRecord

__all__ = ["IMPORTERS", "DatasetLayoutError", "ImportProblem", "import_dataset"]

#: Dataset name -> importer ``fn(root, **options) -> Iterator[ManifestRecord | ImportProblem]``.
IMPORTERS: dict[str, Callable[..., Iterator[ManifestRecord | ImportProblem]]] = {
    "mimic-cxr": iter_mimic_cxr,
    "chexpert": iter_chexpert,
    "brax": iter_brax,
    "candid-ptx": iter_candid_ptx,
    "vindr-cxr": iter_vindr,
    "object-cxr": iter_objectcxr,
    "padchest": iter_padchest,
    "openi": iter_openi,
}


def import_dataset(name: str, root: str | Path, **options: Any) -> Iterator[ManifestRecord | ImportProblem]:
    """Stream a dataset's records; ``name`` is a key of :data:`IMPORTERS`."""
    if name not in IMPORTERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(IMPORTERS)}")
    root = Path(root)
    if not root.exists():
        raise DatasetLayoutError(f"{root}: no such folder; pass the folder of the {name} release")
    return _unique(IMPORTERS[name](root, **options))


def _unique(items: Iterator[ManifestRecord | ImportProblem]) -> Iterator[ManifestRecord | ImportProblem]:
    """Every importer's records with a repeated id (an image listed twice) turned into a problem."""
    seen: set[str] = set()
    for item in items:
        if isinstance(item, ManifestRecord):
            if item.id in seen:
                yield ImportProblem(item.image, f"duplicate id {item.id!r} (the same image listed twice); only "
                                                "the first is kept", item.id)
                continue
            seen.add(item.id)
        yield item
