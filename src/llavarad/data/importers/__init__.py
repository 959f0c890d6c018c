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

__all__ = ["IMPORTERS", "DatasetLayoutError", "DuplicateIds", "ImportProblem", "import_dataset"]

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


def import_dataset(name: str, root: str | Path, *, duplicates: DuplicateIds | None = None,
                   **options: Any) -> Iterator[ManifestRecord | ImportProblem]:
    """Stream a dataset's records; ``name`` is a key of :data:`IMPORTERS`.

    A repeated id (an image listed twice) never gives two records: an identical repeat becomes an
    :class:`ImportProblem`; repeats that disagree (e.g. different labels) are collected in
    ``duplicates.conflicting`` so the caller can remove the first one too once the stream is done
    (:meth:`DuplicateIds.remove_from`), since no one can tell which of them is right.
    """
    if name not in IMPORTERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(IMPORTERS)}")
    root = Path(root)
    if not root.exists():
        raise DatasetLayoutError(f"{root}: no such folder; pass the folder of the {name} release")
    return (duplicates or DuplicateIds())(IMPORTERS[name](root, **options))


class DuplicateIds:
    """Turns repeated record ids into problems; remembers the ids whose repeats disagree."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}  # id -> a digest of the first record's content
        self.conflicting: set[str] = set()

    def __call__(self, items: Iterator[ManifestRecord | ImportProblem]) -> Iterator[ManifestRecord | ImportProblem]:
        import hashlib
        import json

        for item in items:
            if isinstance(item, ManifestRecord):
                digest = hashlib.sha1(json.dumps(item.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
                if item.id in self.first:
                    same = self.first[item.id] == digest
                    if not same:
                        self.conflicting.add(item.id)
                    yield ImportProblem(item.image, f"duplicate id {item.id!r} (the same image listed twice"
                                        + ("; only the first is kept)" if same else " with different content; "
                                           "neither is kept)"), item.id)
                    continue
                self.first[item.id] = digest
            yield item

    def remove_from(self, manifest: str | Path) -> int:
        """Drop the records of :attr:`conflicting` ids from a written manifest (atomically); return how many."""
        if not self.conflicting:
            return 0
        from llavarad.io.manifest import read_jsonl, write_manifest

        kept = [obj for _line, obj in read_jsonl(manifest) if obj.get("id") not in self.conflicting]
        write_manifest(kept, manifest)
        return len(self.conflicting)
