"""Synthetic phantom chest radiographs with known findings, reports, labels and region masks.

Nobody can train on real CXRs in a demo or a test, so this module draws chest-radiograph-like
grayscale images procedurally (numpy + PIL) together with everything a real dataset would give and
more: a findings/impression report in standard radiology phrasing, an indication, the 14 CheXpert
labels, and the pixel mask of every finding (for grounding/attention benchmarks).

Pipeline of one record ``i`` (all deterministic under ``(seed, i)``, independent of other records)::

    rng = default_rng([seed, i])
    spec = sample_spec(rng, config)            # anatomy jitter + findings (side/location/severity)
    report = write_report(rng, spec, ...)      # indication, findings, impression, labels
    image, masks = draw_phantom(rng, spec, size)

Output folder of :func:`generate_phantoms`::

    images/<id>.png                  8-bit grayscale, size x size
    masks/<id>__<finding>.png        binary (0/255) region of each finding
    manifest.jsonl                   ManifestRecord rows + ``phantom_findings``
    phantom_config.json              the PhantomConfig used (a rerun must match it to resume)
    errors.jsonl                     one line per record that could not be written (if any)

Radiological convention: the patient's right appears on the image's left.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from llavarad.config import ConfigError, config_from_dict, config_to_dict
from llavarad.io.manifest import JsonlWriter, ManifestRecord
from llavarad.phantom._draw import render
from llavarad.phantom._spec import (
    CATEGORIES,
    DEVICES,
    FINDINGS,
    AnatomySpec,
    FindingSpec,
    PhantomSpec,
    Side,
)
from llavarad.phantom._text import (
    FINDING_OBSERVATION,
    Report,
    finding_entries,
    write_report,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORIES",
    "DEVICES",
    "FINDINGS",
    "FINDING_OBSERVATION",
    "AnatomySpec",
    "FindingSpec",
    "PhantomConfig",
    "PhantomSpec",
    "PhantomSummary",
    "Report",
    "build_record",
    "draw_phantom",
    "generate_phantoms",
    "load_phantom_config",
    "record_id",
    "sample_spec",
    "write_report",
]

_DEFAULT_PREVALENCE = {
    "cardiomegaly": 0.25,
    "pleural_effusion": 0.25,
    "pneumothorax": 0.22,
    "consolidation": 0.22,
    "edema": 0.2,
    "atelectasis": 0.22,
    "lung_lesion": 0.22,
    "support_devices": 0.25,
}


@dataclass
class PhantomConfig:
    """Settings of a phantom data set; saved as ``phantom_config.json`` beside the output.

    ``prevalence`` is the wanted fraction of *all* images showing each category; ``normal_fraction``
    of the images have no finding at all (not even a device). The per-category draw probabilities
    of abnormal images are solved from these, so both hold in expectation.
    """

    n: int = 1000
    size: int = 224
    seed: int = 0
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    normal_fraction: float = 0.2
    prevalence: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_PREVALENCE))
    #: chance that each absent key finding (pneumothorax, effusion, heart, consolidation, edema) is negated
    negative_mention_prob: float = 0.85
    #: chance that the indication hints at one of the present findings (otherwise a generic reason)
    informative_indication_prob: float = 0.5
    #: "varied": two phrasings per finding and negatives in random order; "fixed": one phrasing, fixed order
    phrasing: Literal["varied", "fixed"] = "varied"
    #: how much anatomy, exposure and noise vary between images (0 = all identical anatomy)
    variation: float = 1.0
    id_prefix: str = "ph"
    dataset: str = "phantom"
    write_masks: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.n < 1:
            problems.append(f"n: {self.n} must be at least 1")
        if not 32 <= self.size <= 2048:
            problems.append(f"size: {self.size} px is outside 32..2048 (use e.g. 112 or 224)")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) or not math.isclose(sum(self.split_fractions), 1.0, abs_tol=1e-6):
            problems.append(f"split_fractions: {list(self.split_fractions)} must be three non-negative numbers "
                            "(train, validate, test) summing to 1, e.g. [0.8, 0.1, 0.1]")
        if not 0.0 <= self.normal_fraction < 1.0:
            problems.append(f"normal_fraction: {self.normal_fraction} must be in [0, 1)")
        unknown = sorted(set(self.prevalence) - set(CATEGORIES))
        if unknown:
            problems.append(f"prevalence: unknown categories {unknown}; expected some of {', '.join(CATEGORIES)}")
        merged = {**_DEFAULT_PREVALENCE, **{k: v for k, v in self.prevalence.items() if k in CATEGORIES}}
        bad = {k: v for k, v in merged.items() if not 0.0 <= v < 1.0 - self.normal_fraction + 1e-9}
        if bad:
            problems.append(f"prevalence: {bad} must each be in [0, 1 - normal_fraction = {1 - self.normal_fraction:g})")
        elif self.normal_fraction < 1.0 and sum(merged.values()) < 1.0 - self.normal_fraction:
            problems.append(f"prevalence: the categories sum to {sum(merged.values()):.2f}, less than the abnormal "
                            f"fraction {1 - self.normal_fraction:.2f}; every abnormal image needs a finding, so raise "
                            "prevalences or normal_fraction")
        for name in ("negative_mention_prob", "informative_indication_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}: {getattr(self, name)} must be in [0, 1]")
        if self.phrasing not in ("varied", "fixed"):
            problems.append(f"phrasing: {self.phrasing!r} is not one of 'varied', 'fixed'")
        if not 0.0 <= self.variation <= 2.0:
            problems.append(f"variation: {self.variation} must be in [0, 2]")
        if not self.id_prefix or not self.id_prefix.replace("_", "").replace("-", "").isalnum():
            problems.append(f"id_prefix: {self.id_prefix!r} must be letters, digits, '-' or '_' (it names files)")
        if problems:
            raise ValueError("; ".join(problems))
        self.prevalence = merged
        self.split_fractions = [float(f) for f in self.split_fractions]

    def draw_probabilities(self) -> dict[str, float]:
        """Per-category probabilities for abnormal images that give the configured marginals.

        An abnormal image draws each category independently and redraws if none came up, so
        ``P(c) = (1 - normal) * q_c / (1 - prod(1 - q))``; solved by fixed-point iteration.
        """
        target = np.array([self.prevalence[c] for c in CATEGORIES])
        abnormal = 1.0 - self.normal_fraction
        q = np.clip(target, 1e-6, 0.999)
        for _ in range(200):
            z = 1.0 - np.prod(1.0 - q)
            q = np.clip(target * z / abnormal, 0.0, 0.999)
        return dict(zip(CATEGORIES, q.tolist()))


_Q_CACHE: dict[tuple[float, tuple[tuple[str, float], ...]], dict[str, float]] = {}


def _draw_probabilities(config: PhantomConfig) -> dict[str, float]:
    key = (config.normal_fraction, tuple(sorted(config.prevalence.items())))
    if key not in _Q_CACHE:
        _Q_CACHE[key] = config.draw_probabilities()
    return _Q_CACHE[key]


def _u(rng: np.random.Generator, centre: float, half: float, variation: float) -> float:
    return float(centre + variation * rng.uniform(-half, half))


def sample_spec(rng: np.random.Generator, config: PhantomConfig) -> PhantomSpec:
    """Draw one phantom's anatomy and findings (presence, side, location, severity).

    Consumes a fixed number of draws for the anatomy first, so anatomy does not depend on the
    findings drawn after it.
    """
    v = config.variation
    dome_r = _u(rng, 0.755, 0.025, v)
    an = AnatomySpec(
        dx=_u(rng, 0.0, 0.02, v), dy=_u(rng, 0.0, 0.02, v),
        thorax_scale=_u(rng, 1.0, 0.06, v), lung_height=_u(rng, 1.0, 0.05, v),
        heart_width=_u(rng, 0.17, 0.01, v), heart_tilt=_u(rng, -18.0, 6.0, v),
        dome_right=dome_r, dome_left=dome_r + _u(rng, 0.025, 0.015, v),
        rib_gap=_u(rng, 0.072, 0.005, v), rib_phase=_u(rng, 0.0, 0.012, v), rib_width=_u(rng, 0.026, 0.004, v),
        clavicle_tilt=_u(rng, 0.0, 0.015, v), tissue=_u(rng, 0.34, 0.03, v), lung_air=_u(rng, 0.24, 0.02, v),
        mediastinum=_u(rng, 0.19, 0.02, v), bone=_u(rng, 0.09, 0.02, v), markings=_u(rng, 0.085, 0.02, v),
        blur=_u(rng, 0.75, 0.35, v), black=_u(rng, 0.02, 0.02, v), white=_u(rng, 0.78, 0.06, v),
        gamma=_u(rng, 1.0, 0.15, v), noise=max(0.0, _u(rng, 0.018, 0.01, v)), exposure_tilt=_u(rng, 0.0, 0.12, v),
        gastric_bubble=bool(rng.random() < 0.7), texture_seed=int(rng.integers(0, 2**31 - 1)),
    )
    breast_draw = rng.random(2)  # always two draws, so the findings below do not depend on v
    an.breast = float(0.03 + 0.04 * breast_draw[1]) * min(v, 1.0) if breast_draw[0] < 0.4 else 0.0
    present: list[str] = []
    if rng.random() >= config.normal_fraction:
        q = _draw_probabilities(config)
        while not present:
            draws = rng.random(len(CATEGORIES))
            present = [c for c, d in zip(CATEGORIES, draws) if d < q[c]]
    findings: list[FindingSpec] = []
    for cat in present:
        seed = int(rng.integers(0, 2**31 - 1))
        side_lr: Side = "right" if rng.random() < 0.5 else "left"
        if cat == "cardiomegaly":
            findings.append(FindingSpec(cat, None, None, str(rng.choice(["mild", "moderate", "severe"])), seed))
        elif cat == "pleural_effusion":
            side: Side = "bilateral" if rng.random() < 0.3 else side_lr
            findings.append(FindingSpec(cat, side, "basal", str(rng.choice(["small", "moderate", "large"])), seed))
        elif cat == "pneumothorax":
            loc = "apical" if rng.random() < 0.55 else "lateral"
            findings.append(FindingSpec(cat, side_lr, loc, str(rng.choice(["small", "moderate", "large"])), seed))
        elif cat == "consolidation":
            loc = str(rng.choice(["upper", "middle", "lower"]))
            findings.append(FindingSpec(cat, side_lr, loc, str(rng.choice(["small", "moderate", "large"])), seed))
        elif cat == "edema":
            findings.append(FindingSpec(cat, "bilateral", "perihilar", str(rng.choice(["mild", "moderate", "severe"])), seed))
        elif cat == "atelectasis":
            side = "bilateral" if rng.random() < 0.25 else side_lr
            findings.append(FindingSpec(cat, side, "basal", str(rng.choice(["mild", "moderate", "severe"])), seed))
        elif cat == "lung_lesion":
            loc = str(rng.choice(["upper", "middle", "lower"]))
            findings.append(FindingSpec(cat, side_lr, loc, str(rng.choice(["small", "moderate", "large"])), seed))
        else:
            k = 1 + int(rng.random() < 0.3)
            for dev in sorted(rng.choice(len(DEVICES), size=k, replace=False).tolist()):
                name = DEVICES[dev]
                side = "left" if name == "pacemaker" and rng.random() < 0.85 else side_lr
                if name == "endotracheal_tube":
                    findings.append(FindingSpec(name, None, "trachea", None, seed + dev))
                else:
                    findings.append(FindingSpec(name, side, None, None, seed + dev))
    return PhantomSpec(anatomy=an, findings=findings)


def draw_phantom(rng: np.random.Generator, spec: PhantomSpec, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one phantom.

    Args:
        rng: supplies only the acquisition noise (a fixed number of draws whatever the findings),
            so equal generator states give the same noise for a spec and its finding-free twin.
        spec: anatomy and findings, e.g. from :func:`sample_spec`.
        size: output side length in pixels.

    Returns:
        ``(image, masks)``: ``image`` is ``(size, size)`` uint8 grayscale; ``masks`` maps each
        finding name of ``spec`` to a ``(size, size)`` bool array of the pixels it occupies.
    """
    if size < 32:
        raise ValueError(f"size {size} px is too small to draw a chest; use at least 32 (e.g. 112 or 224)")
    return render(spec, size, rng)


def record_id(config: PhantomConfig, index: int) -> str:
    """Record id of image ``index``: the prefix, seed and a zero-padded index (unique per seed)."""
    return f"{config.id_prefix}{config.seed}_{index:06d}"


def _splits(config: PhantomConfig) -> list[str]:
    """Exact-count split assignment, shuffled under the seed (stable for a given ``n``)."""
    n = config.n
    counts = [int(round(f * n)) for f in config.split_fractions[:2]]
    counts.append(n - sum(counts))
    labels = ["train"] * counts[0] + ["validate"] * counts[1] + ["test"] * counts[2]
    order = np.random.default_rng([config.seed, 2**20]).permutation(n)
    return [labels[i] for i in order]


def build_record(config: PhantomConfig, index: int, split: str = "train") -> tuple[PhantomSpec, Report, dict[str, Any], np.random.Generator]:
    """Sample record ``index``: its spec, report and manifest row (image not yet drawn).

    Returns the generator positioned for :func:`draw_phantom`, so that drawing continues the
    record's own random stream.
    """
    rng = np.random.default_rng([config.seed, index])
    spec = sample_spec(rng, config)
    report = write_report(rng, spec, negative_prob=config.negative_mention_prob,
                          informative_indication_prob=config.informative_indication_prob,
                          fixed_phrasing=config.phrasing == "fixed")
    rid = record_id(config, index)
    mask_paths = {name: f"masks/{rid}__{name}.png" if config.write_masks else None for name in spec.names()}
    row = ManifestRecord(
        id=rid, image=f"images/{rid}.png", dataset=config.dataset, split=split, patient_id=f"{rid}_patient",
        study_id=f"{rid}_study", view="PA", indication=report.indication, findings=report.findings,
        impression=report.impression, labels=report.labels, text_source="original",
        extra={"phantom_findings": finding_entries(spec, report, mask_paths)},
    ).to_dict()
    return spec, report, row, rng


@dataclass
class PhantomSummary:
    """What :func:`generate_phantoms` did."""

    out_dir: str
    n: int
    written: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    splits: dict[str, int] = field(default_factory=dict)
    finding_counts: dict[str, int] = field(default_factory=dict)
    normal: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def manifest(self) -> str:
        return str(Path(self.out_dir) / "manifest.jsonl")

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "n": self.n, "written": self.written, "skipped": self.skipped,
                "failed": self.failed, "seconds": round(self.seconds, 3), "splits": self.splits,
                "finding_counts": self.finding_counts, "normal": self.normal, "manifest": self.manifest}


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG atomically (temp file + rename), so a killed run never leaves half an image."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG", compress_level=3)
    os.replace(tmp, path)


def _check_config_file(config: PhantomConfig, out: Path) -> None:
    path = out / "phantom_config.json"
    wanted = config_to_dict(config)
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it or use a new --out folder") from exc
        if existing != wanted:
            diff = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            raise ValueError(f"{out} already holds phantoms made with different settings ({', '.join(diff)}); "
                             "use a new --out folder, or the same settings to resume")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_phantom_config(path: str | Path) -> PhantomConfig:
    """Read a ``phantom_config.json`` (or any JSON mapping of :class:`PhantomConfig` fields)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError([f"cannot read {path}: {exc}"], str(path)) from exc
    return config_from_dict(PhantomConfig, data, str(path))


def _draw_and_save(job: tuple[PhantomConfig, int, str, str]) -> tuple[dict[str, Any], str | None]:
    """Draw record ``index`` and write its image and masks; return its row and an error or None."""
    config, index, split, out_dir = job
    out = Path(out_dir)
    spec, _report, row, rng = build_record(config, index, split)
    try:
        image, masks = draw_phantom(rng, spec, config.size)
        if config.write_masks:
            for name, mask in masks.items():
                _save_png(mask.astype(np.uint8) * 255, out / f"masks/{row['id']}__{name}.png")
        _save_png(image, out / row["image"])
    except (OSError, ValueError) as exc:
        return row, f"{row['id']}: {type(exc).__name__}: {exc}"
    return row, None


def generate_phantoms(config: PhantomConfig, out_dir: str | Path,
                      progress: Callable[[int, int], None] | None = None, workers: int = 1) -> PhantomSummary:
    """Generate ``config.n`` phantoms into ``out_dir``; resume a folder made with the same config.

    Records already in ``manifest.jsonl`` are skipped (their files are not redrawn); a record whose
    files cannot be written is logged to ``errors.jsonl`` and the run continues. A record's
    manifest line is written only after its files, in index order, so a killed run resumes
    cleanly. ``workers`` > 1 draws in that many processes (the output is identical).
    ``progress`` is called as ``progress(done, total)`` after each record.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: use 1 or more processes")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if config.write_masks:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    _check_config_file(config, out)
    summary = PhantomSummary(out_dir=str(out), n=config.n)
    counts: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    start = time.perf_counter()
    split_of = _splits(config)
    # No fsync per line: a killed process loses nothing flushed; a torn tail is repaired on resume.
    with JsonlWriter(out / "manifest.jsonl", fsync=False) as writer, JsonlWriter(out / "errors.jsonl", fsync=False) as errors:
        pending = []
        for i in range(config.n):
            spec, _report, row, _rng = build_record(config, i, split_of[i])
            splits[row["split"]] += 1
            counts.update(spec.names())
            summary.normal += not spec.findings
            if row["id"] in writer.done:
                summary.skipped += 1
            else:
                pending.append((config, i, split_of[i], str(out)))
        if progress is not None:
            progress(summary.skipped, config.n)
        pool = None
        if workers > 1 and len(pending) > 1:
            import multiprocessing

            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(min(workers, len(pending)))
        try:
            results = pool.imap(_draw_and_save, pending, chunksize=4) if pool else map(_draw_and_save, pending)
            for row, error in results:
                if error is None:
                    writer.write(row)
                    summary.written += 1
                else:
                    summary.failed += 1
                    err = {"id": row["id"], "error": error}
                    summary.errors.append(err)
                    errors.write(err)
                    logger.error("phantom %s", error)
                if progress is not None:
                    progress(summary.skipped + summary.written + summary.failed, config.n)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    if (out / "errors.jsonl").exists() and not summary.failed and (out / "errors.jsonl").stat().st_size == 0:
        (out / "errors.jsonl").unlink()
    summary.seconds = time.perf_counter() - start
    summary.splits = dict(splits)
    summary.finding_counts = {name: counts.get(name, 0) for name in FINDINGS}
    logger.info("phantoms: %d written, %d already present, %d failed in %.1f s", summary.written,
                summary.skipped, summary.failed, summary.seconds)
    return summary
