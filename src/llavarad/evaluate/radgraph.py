"""F1-RadGraph through the optional ``radgraph`` package, with a local weights folder.

The metric (LLaVA-Rad's evaluation, the "partial" reward of the ``radgraph`` package):

* RadGraph annotates each report with entities (tokens, label such as
  ``Observation::definitely present``) and their relations.
* Each entity becomes ``(tokens, label)``, or ``(tokens, label, True)`` when it has at least one
  relation; the reward of a pair is the F1 of these two sets (precision 0 when the prediction has
  no entity, recall 0 when the reference has none).
* A pair where either report is empty scores 0; the metric is the mean over reports.

ReXrank's RadGraph column (the public leaderboard; its scorer is CXR-Report-Metric's
radgraph_evaluate_model.py) is another score of the same annotations, kept as an extra column:
the F1 of the entity sets ``(tokens, label)`` and the F1 of the relation sets
``((tokens, label), (target tokens, target label), relation type)`` of each pair, averaged
(:func:`rexrank_scores`; "radgraph_combined" there).

Two generations of the ``radgraph`` package are supported, told apart by what ``RadGraph``
accepts: the 0.0.9 API that the release pins (model archive ``radgraph.tar.gz`` in the package's
``CACHE_DIR``, where the release's rrg_eval downloads it at a fixed revision) and the newer API
(``model_type`` and ``model_cache_dir``, unpacked weights). Which one ran is recorded.

The model weights cannot be downloaded here. Point ``weights`` or the ``LLAVARAD_RADGRAPH_WEIGHTS``
environment variable at a folder that holds the unpacked archive (``<dir>/radgraph/config.json``,
``vocabulary/`` and ``weights.th`` from ``radgraph.tar.gz`` of the StanfordAIMI/RRG_scorers hub
repository), or at the ``radgraph`` folder itself. Without the package or weights,
:class:`RadGraphUnavailable` says what is missing and the evaluation skips the metric.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any

import numpy as np

from llavarad.errors import LlavaradError

logger = logging.getLogger(__name__)

__all__ = [
    "ENV_VAR",
    "LEGACY_ARCHIVE",
    "LEGACY_REVISION",
    "MODEL_TYPES",
    "RadGraphScorer",
    "RadGraphUnavailable",
    "package_api",
    "partial_reward",
    "radgraph_settings",
    "resolve_weights",
    "rexrank_scores",
]

ENV_VAR = "LLAVARAD_RADGRAPH_WEIGHTS"
#: The model archive radgraph 0.0.9 reads from its CACHE_DIR, and the revision the release pins
#: (llava/eval/rrg_eval/rrg_eval/f1radgraph.py, _download_radgraph).
LEGACY_ARCHIVE = "radgraph.tar.gz"
LEGACY_REVISION = "d97745aa136e5beb927da7e768e99de6ae807902"
#: Model folders the radgraph package knows; LLaVA-Rad's evaluation used "radgraph".
MODEL_TYPES: tuple[str, ...] = ("radgraph", "radgraph-xl", "modern-radgraph-xl")
_HOW_TO = (
    "On a machine with internet access download radgraph.tar.gz from the Hugging Face repository "
    "StanfordAIMI/RRG_scorers, unpack it into DIR/radgraph/ (config.json, vocabulary/, weights.th), "
    f"copy DIR here and pass --radgraph-weights DIR or set {ENV_VAR}=DIR; install the package with "
    "`pip install radgraph` (extra: llavarad[radgraph])."
)

Annotation = Mapping[str, Any]


class RadGraphUnavailable(LlavaradError, RuntimeError):
    """The radgraph package or its weights are missing; the message says how to get them."""


def _entity_set(annotation: Annotation) -> set[tuple]:
    entities = annotation.get("entities", {}) if isinstance(annotation, Mapping) else {}
    items = entities.values() if isinstance(entities, Mapping) else entities
    out: set[tuple] = set()
    for ent in items:
        if ent.get("relations"):
            out.add((ent["tokens"], ent["label"], True))
        else:
            out.add((ent["tokens"], ent["label"]))
    return out


def partial_reward(hyp: Annotation, ref: Annotation) -> float:
    """RadGraph "partial" reward of one pair of annotations, in [0, 1].

    Args:
        hyp, ref: RadGraph annotations, ``{"entities": {id: {"tokens", "label", "relations"}}}``.
    """
    h, r = _entity_set(hyp), _entity_set(ref)
    matched = len(h & r)
    precision = matched / len(h) if h else 0.0
    recall = matched / len(r) if r else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _set_f1(a: set, b: set) -> float:
    matched = len(a & b)
    precision = matched / len(a) if a else 0.0
    recall = matched / len(b) if b else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _entities_and_relations(annotation: Annotation) -> tuple[set[tuple], set[tuple]]:
    entities = annotation.get("entities", {}) if isinstance(annotation, Mapping) else {}
    if not isinstance(entities, Mapping):
        entities = {str(i): e for i, e in enumerate(entities)}
    ents = {(e["tokens"], e["label"]) for e in entities.values()}
    rels = set()
    for e in entities.values():
        for rel in e.get("relations") or []:
            target = entities.get(str(rel[1]))
            if target is not None:
                rels.add(((e["tokens"], e["label"]), (target["tokens"], target["label"]), rel[0]))
    return ents, rels


def rexrank_scores(hyp: Annotation, ref: Annotation) -> tuple[float, float, float]:
    """ReXrank's RadGraph scores of one pair: ``(entity_f1, relation_f1, combined)``, each in [0, 1].

    Entity F1 over ``(tokens, label)`` sets, relation F1 over ``(source entity, target entity,
    relation type)`` sets (0 when neither has any), combined = their mean, as in
    CXR-Report-Metric (compute_f1, parse_entity_relation, add_radgraph_results_to_csv).
    """
    he, hr = _entities_and_relations(hyp)
    re_, rr = _entities_and_relations(ref)
    ent, rel = _set_f1(he, re_), _set_f1(hr, rr)
    return ent, rel, (ent + rel) / 2


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "weights.th").is_file()


def resolve_weights(weights: str | os.PathLike | None = None, model_type: str = "radgraph") -> tuple[Path, str]:
    """Find the folder to hand the radgraph package as ``model_cache_dir``.

    Looks at ``weights``, then ``$LLAVARAD_RADGRAPH_WEIGHTS``, then the package's own cache.

    Returns:
        ``(model_cache_dir, model_type)`` where ``model_cache_dir/model_type`` holds the weights.

    Raises:
        RadGraphUnavailable: no usable folder; the message names what was tried and the fix.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r}: use one of {', '.join(MODEL_TYPES)}")
    given = weights if weights not in (None, "") else os.environ.get(ENV_VAR) or None
    if given is not None:
        path = Path(given).expanduser()
        source = "weights argument" if weights not in (None, "") else ENV_VAR
        if _is_model_folder(path):
            if path.name not in MODEL_TYPES:
                raise RadGraphUnavailable(
                    f"{path} ({source}) holds RadGraph weights but the radgraph package finds a model only "
                    f"in a folder named one of {', '.join(MODEL_TYPES)}; rename it (e.g. to {path.parent / model_type})")
            return path.parent, path.name
        if _is_model_folder(path / model_type):
            return path, model_type
        raise RadGraphUnavailable(f"{path} ({source}) has no {model_type}/config.json and weights.th. {_HOW_TO}")
    try:
        from radgraph.radgraph import CACHE_DIR  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        raise RadGraphUnavailable(f"the radgraph package is not installed and no weights were given. {_HOW_TO}") from None
    if _is_model_folder(Path(CACHE_DIR) / model_type):
        return Path(CACHE_DIR), model_type
    if model_type == "radgraph" and (Path(CACHE_DIR) / LEGACY_ARCHIVE).is_file():
        return Path(CACHE_DIR), model_type  # the 0.0.9 layout: the archive itself, as the release downloads it
    raise RadGraphUnavailable(f"no RadGraph weights given and none in the package cache {CACHE_DIR}. {_HOW_TO}")


def package_api(radgraph_class: type) -> str:
    """Which generation of the radgraph package ``radgraph_class`` (its ``RadGraph``) belongs to.

    Returns "0.0.9" (the release's pin: no ``model_cache_dir``; the model is the archive
    ``CACHE_DIR/radgraph.tar.gz``) or "current" (``model_type`` and ``model_cache_dir``).
    """
    params = inspect.signature(radgraph_class.__init__).parameters
    return "current" if "model_cache_dir" in params else "0.0.9"


def _accepted(radgraph_class: type, **kwargs: Any) -> dict[str, Any]:
    params = inspect.signature(radgraph_class.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


class RadGraphScorer:
    """Per-report F1-RadGraph ("partial" reward).

    Args:
        weights: folder with the model (see module docs); default ``$LLAVARAD_RADGRAPH_WEIGHTS``.
        model_type: which RadGraph model ("radgraph", as in LLaVA-Rad's evaluation).
        device: "cpu" or "cuda"; default cuda when available.
        annotator: a function mapping texts to RadGraph annotations, used instead of the package
            (tests, or annotations computed elsewhere).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        model_type: str = "radgraph",
        device: str | None = None,
        batch_size: int = 1,
        annotator: Callable[[list[str]], list[Annotation]] | None = None,
    ):
        self.model_type = model_type
        self.weights: str | None = None
        if annotator is not None:
            self._annotate = annotator
            self.version = "external annotator"
            self.api = "external annotator"
            return
        try:
            import torch
            from radgraph import RadGraph  # type: ignore[import-not-found]
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
            resolve_weights(weights, model_type)  # says what is missing when the weights are missing too
            raise RadGraphUnavailable(f"cannot import the radgraph package ({exc}). {_HOW_TO}") from exc
        cuda = 0 if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else -1
        self.api = package_api(RadGraph)
        if self.api == "0.0.9":
            self.weights = str(self._legacy_archive(weights, model_type))
            self._model = RadGraph(**_accepted(RadGraph, batch_size=batch_size, cuda=cuda))
        else:
            cache_dir, self.model_type = resolve_weights(weights, model_type)
            self.weights = str(cache_dir / self.model_type)
            self._model = RadGraph(**_accepted(RadGraph, model_type=self.model_type, model_cache_dir=str(cache_dir),
                                               cuda=cuda, batch_size=batch_size))
        self.version = _pkg_version("radgraph")
        logger.info("RadGraph %s loaded from %s (radgraph %s, %s API)", self.model_type, self.weights, self.version,
                    self.api)

        def _package_annotate(texts: list[str]) -> list[Annotation]:
            out = self._model(texts)
            return [out[str(i)] for i in range(len(texts))]

        self._annotate = _package_annotate

    @staticmethod
    def _legacy_archive(weights: str | os.PathLike | None, model_type: str) -> Path:
        from radgraph.radgraph import CACHE_DIR  # type: ignore[import-not-found]

        archive = Path(CACHE_DIR) / LEGACY_ARCHIVE
        where = (f"radgraph 0.0.9 (the release's pin) reads its model only from {archive}: put radgraph.tar.gz "
                 f"there (StanfordAIMI/RRG_scorers, revision {LEGACY_REVISION}, as the release downloads it) or "
                 "install radgraph>=0.1 to use --radgraph-weights")
        if model_type != "radgraph":
            raise RadGraphUnavailable(f"model_type={model_type!r}: radgraph 0.0.9 has only 'radgraph'; {where}")
        if weights not in (None, "") or os.environ.get(ENV_VAR):
            raise RadGraphUnavailable(f"a weights folder was given, but {where}")
        if not archive.is_file():
            raise RadGraphUnavailable(f"no model archive: {where}")
        return archive

    def annotate(self, texts: Sequence[str]) -> list[Annotation]:
        """RadGraph annotations of ``texts`` (one dict per text)."""
        texts = list(texts)
        if not texts:
            return []
        out = self._annotate(texts)
        if len(out) != len(texts):
            raise RuntimeError(f"RadGraph returned {len(out)} annotations for {len(texts)} reports")
        return list(out)

    def score(self, refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
        """Partial reward of each pair, shape ``(n_reports,)``; a pair with an empty report is 0."""
        return self.score_all(refs, hyps)["partial"]

    def score_all(self, refs: Sequence[str], hyps: Sequence[str]) -> dict[str, np.ndarray]:
        """Every RadGraph score of each pair from one annotation pass, each shape ``(n_reports,)``.

        Keys: "partial" (F1-RadGraph of the release), "entity", "relation" and "combined"
        (ReXrank, :func:`rexrank_scores`). A pair with an empty report scores 0 everywhere.
        """
        if len(refs) != len(hyps):
            raise ValueError(f"got {len(refs)} references but {len(hyps)} predictions")
        out = {key: np.zeros(len(refs), dtype=np.float64) for key in ("partial", "entity", "relation", "combined")}
        keep = [i for i, (r, h) in enumerate(zip(refs, hyps)) if r.strip() and h.strip()]
        if not keep:
            return out
        ann = self.annotate([hyps[i] for i in keep] + [refs[i] for i in keep])
        k = len(keep)
        for j, i in enumerate(keep):
            out["partial"][i] = partial_reward(ann[j], ann[k + j])
            out["entity"][i], out["relation"][i], out["combined"][i] = rexrank_scores(ann[j], ann[k + j])
        return out


def radgraph_settings(scorer: RadGraphScorer | None, skipped_reason: str | None = None) -> dict:
    """Implementation, version and settings of F1-RadGraph, for the result file.

    ``settings.package_api`` says which radgraph API ran ("0.0.9", "current", "external annotator").
    """
    try:
        pkg = _pkg_version("radgraph")
    except PackageNotFoundError:
        pkg = None
    out: dict[str, Any] = {
        "implementation": "radgraph package annotations + llavarad partial reward",
        "version": scorer.version if scorer is not None else pkg,
        "settings": {"reward_level": "partial", "entity_key": "(tokens, label[, has_relation])",
                     "empty_report": 0.0, "aggregate": "mean over reports", "scale": "0-100",
                     "model_type": scorer.model_type if scorer is not None else None,
                     "weights": scorer.weights if scorer is not None else None,
                     "package_api": getattr(scorer, "api", None)},
    }
    if skipped_reason:
        out["skipped"] = skipped_reason
    return out
