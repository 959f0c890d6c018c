"""Training and evaluation sets from imported manifests (the last data-preparation stage).

- :func:`build_cxr697k`: stage-1 (image encoder) pairs from the seven sources, train splits only;
  label-only datasets get Supplementary Table 5 templates, MIMIC-CXR its (LLM-)extracted findings,
  PadChest its English translation. Counts come back in the layout of Supplementary Table 4.
- :func:`build_mimic`: stage-2/3 sets. AP/PA images with non-empty findings; train and validate keep
  both the rule-based and the LLM-structured variant of a report, test keeps rule-based findings
  only. Counts in the layout of Supplementary Table 3.
- :func:`build_openi`: Open-I evaluation set (frontal images with findings).

Every builder streams: records are read, transformed and written one at a time, LLM outputs are
joined through an on-disk index, and only per-dataset counters plus 8-byte hashes of patient and
study ids stay in memory. Every record left out is counted under a reason in the returned table.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavarad.data._index import DiskIndex
from llavarad.data.structuring import report_key
from llavarad.data.templates import synthesize_report
# iter_manifest is the shared streaming reader, re-exported here for the data verbs
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS, ManifestRecord, iter_manifest, read_jsonl, write_manifest

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_DATASETS",
    "PAPER_TABLE3",
    "PAPER_TABLE4",
    "CountTable",
    "build_cxr697k",
    "build_mimic",
    "build_openi",
    "dataset_counts",
    "iter_manifest",
]

#: Datasets whose pre-training text is written from labels (Supplementary Table 4, "Synthetic Findings").
LABEL_DATASETS: tuple[str, ...] = ("chexpert", "brax", "candid-ptx", "vindr-cxr", "object-cxr")
_REAL_DATASETS: tuple[str, ...] = ("mimic-cxr", "padchest")
_DISPLAY = {"chexpert": "CheXpert", "brax": "BraX", "candid-ptx": "CandidPTX", "vindr-cxr": "VinDR",
            "object-cxr": "JF Healthcare", "mimic-cxr": "MIMIC-CXR", "padchest": "PadChest"}

#: Supplementary Table 4 of the paper: patients, images, label types, min, max, avg words, pairs.
PAPER_TABLE4: dict[str, tuple[Any, ...]] = {
    "chexpert": (64540, 224316, 14, 3, 89, 27.8, 190999), "brax": (19351, 40967, 14, 3, 76, 32.1, 19309),
    "candid-ptx": (13744, 19237, 3, 12, 33, 22.8, 19237), "vindr-cxr": (18000, 18000, 6, 79, 125, 103.2, 15000),
    "object-cxr": (10000, 10000, 1, 4, 12, 7.6, 10000), "mimic-cxr": (65379, 377095, None, 3, 183, 85.1, 353350),
    "padchest": (67625, 168861, None, 1, 133, 12.5, 89540),
}
#: Supplementary Table 3 of the paper: rows x (train, validate, test).
PAPER_TABLE3: dict[str, tuple[int | None, int | None, int | None]] = {
    "Patients": (63169, 487, 289), "Studies": (213365, 1733, 3041), "DICOMs (AP/PA)": (237972, 1959, 3403),
    "Rule-based reports": (162969, 1286, 2461), "GPT-structured reports": (237073, 1952, None),
    "Total data": (400042, 3238, 2461),
}


@dataclass
class CountTable:
    """A counts table for the CLI to render: header, rows of cells, and notes (exclusions)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _h(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


@dataclass
class _DatasetStats:
    patients: set[int] = field(default_factory=set)
    images: int = 0
    label_types: set[str] = field(default_factory=set)
    pairs: int = 0
    words_min: int | None = None
    words_max: int | None = None
    words_sum: int = 0
    excluded: Counter = field(default_factory=Counter)

    def add_text(self, text: str) -> None:
        n = len(text.split())
        self.pairs += 1
        self.words_sum += n
        self.words_min = n if self.words_min is None else min(self.words_min, n)
        self.words_max = n if self.words_max is None else max(self.words_max, n)


def _load_llm_outputs(paths: Iterable[str | Path | None], index: DiskIndex) -> int:
    """Index the rows of LLM step outputs by ``task|id`` (for one task, a later file wins)."""
    n = 0
    for path in paths:
        if path:
            n += index.put_many((f"{obj.get('task', 'structure')}|{obj['id']}", obj)
                                for _line, obj in read_jsonl(path) if isinstance(obj, dict) and "id" in obj)
    return n


def _iter_all(manifests: Iterable[str | Path]) -> Iterator[ManifestRecord]:
    for path in manifests:
        yield from iter_manifest(path)


def _is_frontal(rec: ManifestRecord) -> bool | None:
    if rec.view in ("PA", "AP"):
        return True
    if rec.view is not None:
        return False
    frontal = rec.extra.get("frontal")
    return None if frontal is None else bool(frontal)


def _label_items(rec: ManifestRecord) -> dict[str, Any]:
    source = rec.extra.get("source_labels")
    if isinstance(source, dict) and source:
        return source
    return {k: rec.labels.get(k) for k in CHEXPERT_OBSERVATIONS if k in rec.labels}


def _llm_findings(llm: DiskIndex, rec: ManifestRecord, tasks: tuple[str, ...]) -> tuple[str | None, str | None, bool]:
    """Findings from the first of ``tasks`` whose output has some; also whether any output exists."""
    key = report_key(rec)
    seen = False
    for task in tasks:
        row = llm.get(f"{task}|{key}")
        if not row:
            continue
        seen = True
        sections = row.get("sections")
        text = sections.get("findings") if isinstance(sections, dict) else row.get("findings")
        if text:
            return text, row.get("text_source", "llm_structured"), True
    return None, None, seen


def build_cxr697k(manifests: Iterable[str | Path], out_path: str | Path, *,
                  llm_outputs: Iterable[str | Path] = (), seed: int = 0, splits: tuple[str, ...] = ("train",),
                  on_record: Callable[[], None] | None = None) -> CountTable:
    """Write the stage-1 pre-training manifest (CXR-697K) and return Supplementary Table 4's counts.

    Args:
        manifests: imported manifests (any of the seven datasets, any order).
        out_path: output JSONL manifest (written atomically).
        llm_outputs: outputs of ``llavarad data structure|findings|translate`` (joined by report id).
        seed: seed of the label templates.
        splits: official splits to keep (the paper: train only).
        on_record: called once per input record (progress).
    """
    stats: dict[str, _DatasetStats] = {}

    def records(llm: DiskIndex) -> Iterator[ManifestRecord]:
        for rec in _iter_all(manifests):
            if on_record:
                on_record()
            st = stats.setdefault(rec.dataset, _DatasetStats())
            st.images += 1
            if rec.patient_id:
                st.patients.add(_h(rec.patient_id))
            if rec.dataset not in LABEL_DATASETS + _REAL_DATASETS:
                st.excluded["not a CXR-697K source"] += 1
                continue
            if rec.split not in splits:
                st.excluded[f"split {rec.split}"] += 1
                continue
            frontal = _is_frontal(rec)
            if rec.dataset != "mimic-cxr" and frontal is not True:
                st.excluded["lateral view" if frontal is False else "view unknown"] += 1
                continue
            if rec.dataset in LABEL_DATASETS:
                items = _label_items(rec)
                st.label_types.update(k for k, v in items.items())
                try:
                    text, source = synthesize_report(items, rec.id, seed).text, "label_template"
                except ValueError as exc:  # unknown or contradictory labels: counted, never written as text
                    logger.warning("%s: %s", rec.id, exc)
                    st.excluded["unusable labels"] += 1
                    continue
            elif rec.dataset == "padchest":
                text, source, seen = _llm_findings(llm, rec, ("translate",))
                if not seen:
                    st.excluded["not translated yet"] += 1
                    continue
            else:
                text, source, _seen = _llm_findings(llm, rec, ("structure", "findings"))
                if not text:
                    text, source = rec.findings, "rule_based"
            if not text:
                st.excluded["no findings"] += 1
                continue
            st.add_text(text)
            yield ManifestRecord(id=rec.id, image=rec.image, dataset=rec.dataset, split=rec.split,
                                 patient_id=rec.patient_id, study_id=rec.study_id, view=rec.view,
                                 findings=text, labels=rec.labels, text_source=source or "original")

    with DiskIndex() as llm:
        _load_llm_outputs(llm_outputs, llm)
        write_manifest(records(llm), out_path)
    return _table4(stats)


def _table4(stats: dict[str, _DatasetStats]) -> CountTable:
    cols = ["Dataset", "Patients", "Images", "Label Types", "Min", "Max", "Avg.", "Pre-training Image-Text Pairs",
            "Paper pairs"]
    rows: list[list[str]] = []
    notes: list[str] = []
    total = 0
    data: dict[str, Any] = {}
    for group, names in (("Synthetic Findings", LABEL_DATASETS), ("Real-World Findings", _REAL_DATASETS)):
        rows.append([f"*{group}*"] + [""] * (len(cols) - 1))
        for name in names:
            st = stats.get(name)
            paper = PAPER_TABLE4[name]
            if st is None:
                rows.append([_DISPLAY[name], *["-"] * 7, _fmt(paper[6])])
                continue
            avg = st.words_sum / st.pairs if st.pairs else None
            label_types = len(st.label_types) if name in LABEL_DATASETS else None
            rows.append([_DISPLAY[name], _fmt(len(st.patients) or None), _fmt(st.images), _fmt(label_types),
                         _fmt(st.words_min), _fmt(st.words_max), _fmt(avg), _fmt(st.pairs), _fmt(paper[6])])
            total += st.pairs
            data[name] = {"patients": len(st.patients), "images": st.images, "label_types": label_types,
                          "words_min": st.words_min, "words_max": st.words_max, "words_avg": avg, "pairs": st.pairs,
                          "excluded": dict(st.excluded)}
            if st.excluded:
                notes.append(f"{_DISPLAY[name]}: left out " + ", ".join(f"{v:,} ({k})" for k, v in sorted(st.excluded.items())))
    for name, st in stats.items():
        if name not in _DISPLAY:
            notes.append(f"{name}: {st.images:,} record(s) ignored (not a CXR-697K source)")
    rows.append(["Total:", "", "", "", "", "", "", _fmt(total), _fmt(697435)])
    data["total_pairs"] = total
    return CountTable("CXR-697K (layout of Supplementary Table 4; text length in words)", cols, rows, notes, data)


def build_mimic(manifest: str | Path, out_dir: str | Path, *, llm_outputs: Iterable[str | Path] = (),
                on_record: Callable[[], None] | None = None) -> CountTable:
    """Write ``mimic_{train,validate,test}.jsonl`` for stages 2/3; return Supplementary Table 3's counts.

    Rule-based variants get ids ``<id>/rule_based``, LLM-structured ones ``<id>/llm_structured``.
    """
    splits = ("train", "validate", "test")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = {s: {"patients": set(), "studies": set(), "dicoms": 0, "rule": 0, "llm": 0} for s in splits}
    excluded: Counter = Counter()
    tmp_paths = {s: out_dir / f".mimic_{s}.jsonl.partial" for s in splits}

    with DiskIndex() as llm:
        _load_llm_outputs(llm_outputs, llm)
        handles = {s: tmp_paths[s].open("w", encoding="utf-8") for s in splits}
        try:
            for rec in iter_manifest(manifest):
                if on_record:
                    on_record()
                if rec.dataset != "mimic-cxr":
                    excluded[f"dataset {rec.dataset}"] += 1
                    continue
                if rec.view not in ("AP", "PA"):
                    excluded["not AP/PA"] += 1
                    continue
                s = c[rec.split]
                s["dicoms"] += 1
                s["patients"].add(_h(rec.patient_id or rec.id))
                s["studies"].add(_h(rec.study_id or rec.id))
                wrote = False
                if rec.findings:
                    out = ManifestRecord.from_dict({**rec.to_dict(), "id": f"{rec.id}/rule_based",
                                                    "text_source": "rule_based"})
                    handles[rec.split].write(json.dumps(out.to_dict(), ensure_ascii=False) + "\n")
                    s["rule"] += 1
                    wrote = True
                row = llm.get(f"structure|{report_key(rec)}") if rec.split != "test" else None
                sections = row.get("sections") if row else None
                if isinstance(sections, dict) and sections.get("findings"):
                    out = ManifestRecord.from_dict({**rec.to_dict(), "id": f"{rec.id}/llm_structured",
                                                    "indication": sections.get("indication"),
                                                    "findings": sections["findings"],
                                                    "impression": sections.get("impression"),
                                                    "text_source": "llm_structured"})
                    handles[rec.split].write(json.dumps(out.to_dict(), ensure_ascii=False) + "\n")
                    s["llm"] += 1
                    wrote = True
                if not wrote:
                    excluded[f"{rec.split}: no findings"] += 1
        finally:
            for fh in handles.values():
                fh.close()
    for s in splits:
        tmp_paths[s].replace(out_dir / f"mimic_{s}.jsonl")
    return _table3(c, excluded)


def _table3(c: dict[str, dict[str, Any]], excluded: Counter) -> CountTable:
    splits = ("train", "validate", "test")
    values = {
        "Patients": [len(c[s]["patients"]) for s in splits],
        "Studies": [len(c[s]["studies"]) for s in splits],
        "DICOMs (AP/PA)": [c[s]["dicoms"] for s in splits],
        "Rule-based reports": [c[s]["rule"] for s in splits],
        "GPT-structured reports": [c[s]["llm"] if s != "test" else None for s in splits],
        "Total data": [c[s]["rule"] + c[s]["llm"] for s in splits],
    }
    cols = ["MIMIC-CXR", "Training", "Validation", "Test", "Paper: Training", "Validation", "Test"]
    rows = [[name, *(_fmt(v) for v in vals), *(_fmt(v) for v in PAPER_TABLE3[name])] for name, vals in values.items()]
    notes = [f"left out {v:,} image(s): {k}" for k, v in sorted(excluded.items())]
    return CountTable("MIMIC-CXR stage 2/3 sets (layout of Supplementary Table 3)", cols, rows, notes,
                      {"counts": values, "excluded": dict(excluded)})


def build_openi(manifest: str | Path, out_path: str | Path, *, on_record: Callable[[], None] | None = None) -> CountTable:
    """Write the Open-I evaluation manifest: frontal (PA/AP) images whose report has findings."""
    counts: Counter = Counter()
    reports: set[int] = set()

    def records() -> Iterator[ManifestRecord]:
        for rec in iter_manifest(manifest):
            if on_record:
                on_record()
            counts["images"] += 1
            reports.add(_h(rec.study_id or rec.id))
            frontal = _is_frontal(rec)
            if frontal is None:
                counts["excluded: view unknown"] += 1
            elif not frontal:
                counts["excluded: lateral"] += 1
            elif not (rec.findings or "").strip():
                counts["excluded: no findings"] += 1
            else:
                counts["kept"] += 1
                yield rec

    write_manifest(records(), out_path)
    rows = [["Reports", _fmt(len(reports))], ["Images", _fmt(counts["images"])]]
    rows += [[k, _fmt(v)] for k, v in sorted(counts.items()) if k.startswith("excluded")]
    rows.append(["Evaluation pairs (frontal, with findings)", _fmt(counts["kept"])])
    return CountTable("Open-I evaluation set", ["Open-I", "Count"], rows, [], dict(counts, reports=len(reports)))


def dataset_counts(manifest: str | Path) -> CountTable:
    """Counts of any manifest by dataset, split and text source (``llavarad data counts``)."""
    by: Counter = Counter()
    patients: dict[str, set[int]] = {}
    for rec in iter_manifest(manifest):
        by[(rec.dataset, rec.split, rec.text_source, bool((rec.findings or "").strip()))] += 1
        if rec.patient_id:
            patients.setdefault(rec.dataset, set()).add(_h(rec.patient_id))
    rows = [[d, s, t, "yes" if f else "no", _fmt(n)] for (d, s, t, f), n in sorted(by.items())]
    notes = [f"{d}: {len(p):,} patients" for d, p in sorted(patients.items())]
    return CountTable(f"Records of {manifest}", ["Dataset", "Split", "Text source", "Findings", "Records"], rows, notes,
                      {"records": sum(by.values())})
