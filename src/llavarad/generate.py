"""Report generation: one image or a hundred thousand.

- :class:`ReportGenerator` is the short Python API: load a model folder, generate Findings for an
  image path or PIL image.
- :func:`generate_reports` runs greedy batched generation (left padding, attention mask, KV cache)
  on PIL images; batched and one-at-a-time outputs are identical.
- :func:`run_generation` is the batch job over a manifest: resumable (ids already in the output are
  skipped; a ``kill -9`` loses at most the batch in flight and never leaves a broken file), a bad
  row gets an error record and the run continues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llavarad.errors import SettingError
from llavarad.io.manifest import JsonlWriter, resolve_image_path
from llavarad.model.processor import pixel_values_for, tokenize_prompt
from llavarad.prompts.model import build_prompt

if TYPE_CHECKING:
    from PIL import Image

    from llavarad.model.build import ModelBundle

logger = logging.getLogger(__name__)

__all__ = [
    "GenerationSettings",
    "GenerationSummary",
    "IndicationTooLongError",
    "ReportGenerator",
    "cap_indication",
    "generate_reports",
    "manifest_row_ids",
    "run_generation",
]


@dataclass
class GenerationSettings:
    """How reports are generated; recorded in every output row. Defaults follow the paper."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0  # >0 only for benchmarks that need a fixed amount of work
    batch_size: int = 8
    prompt_format: str | None = None  # None: the model folder's own format
    num_beams: int = 1
    repetition_penalty: float = 1.0
    #: Longest indication fed to the model, in tokens; a longer one is cut (and the cut recorded) or,
    #: with ``long_indication="error"``, the row fails. Keeps one absurd row from stalling a batch.
    max_indication_tokens: int = 512
    long_indication: Literal["truncate", "error"] = "truncate"

    def __post_init__(self) -> None:
        problems = []
        if self.max_indication_tokens < 1:
            problems.append(f"max_indication_tokens={self.max_indication_tokens} must be >= 1")
        if self.long_indication not in ("truncate", "error"):
            problems.append(f"long_indication={self.long_indication!r} must be 'truncate' or 'error'")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be >= 1")
        if self.prompt_format not in (None, "plain", "v1"):
            problems.append(f"prompt_format={self.prompt_format!r} must be 'plain' or 'v1'")
        if self.num_beams < 1:
            problems.append(f"num_beams={self.num_beams} must be >= 1")
        if problems:
            raise SettingError("; ".join(problems))


#: Characters kept before tokenizing a long indication: no vocabulary token is longer than this
#: many characters, so the cut keeps at least ``max_indication_tokens`` tokens.
_CHARS_PER_TOKEN_BOUND = 32


def cap_indication(tokenizer: Any, text: str | None, settings: GenerationSettings) -> tuple[str | None, str | None]:
    """``(indication, note)``: ``text`` cut to ``settings.max_indication_tokens`` tokens; ``note`` says so.

    Raises :class:`IndicationTooLongError` instead when ``settings.long_indication == "error"``.
    Tokenizing is bounded too: at most ``max_indication_tokens * 32`` characters are looked at.
    """
    limit = settings.max_indication_tokens
    if text is None or len(text) <= limit:  # a token is at least one character
        return text, None
    head = text[: limit * _CHARS_PER_TOKEN_BOUND]
    try:
        offsets = tokenizer(head, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError):  # a slow tokenizer has no offsets: count ids instead
        ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        offsets = None
    n_tokens = len(offsets) if offsets is not None else len(ids)
    if n_tokens <= limit and len(head) == len(text):
        return text, None
    if settings.long_indication == "error":
        raise IndicationTooLongError(f"indication longer than max_indication_tokens={limit} tokens "
                                     f"({len(text):,} characters); shorten it or raise the limit")
    if offsets is None:
        cut_text = tokenizer.decode(ids[:limit], skip_special_tokens=True)
    else:
        cut_text = text[: offsets[limit - 1][1] if n_tokens > limit else len(head)]
    return cut_text, f"indication cut to {limit} tokens (from {len(text):,} characters)"


class IndicationTooLongError(SettingError):
    """An indication over ``max_indication_tokens`` with ``long_indication="error"``."""


def _encode_prompts(bundle: ModelBundle, indications: Sequence[str | None], fmt: str) -> list[list[int]]:
    return [
        tokenize_prompt(bundle.tokenizer, build_prompt(fmt, indication=ind).prompt, bundle.num_image_tokens,
                        bundle.image_token_id)
        for ind in indications
    ]


def _generate_batch(bundle: ModelBundle, images: Sequence[Image.Image], indications: Sequence[str | None],
                    settings: GenerationSettings) -> list[str]:
    """Greedy generation for one batch. Prompts are left-padded so new tokens line up."""
    import torch

    model = bundle.model
    fmt = settings.prompt_format or bundle.prompt_format
    prompts = _encode_prompts(bundle, indications, fmt)
    pad_id = bundle.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = bundle.tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, width - len(ids):] = 1
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixel_values = _pixel_values(bundle, images).to(device=device, dtype=dtype)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            pixel_values=pixel_values,
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens or None,
            do_sample=False,
            num_beams=settings.num_beams,
            repetition_penalty=settings.repetition_penalty,
            pad_token_id=pad_id,
            eos_token_id=bundle.tokenizer.eos_token_id,
            use_cache=True,
        )
    new_tokens = out[:, width:]
    texts = bundle.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [t.strip() for t in texts]


def _pixel_values(bundle: ModelBundle, images: Sequence[Any]):
    """``(batch, 3, size, size)`` from PIL images, or stacked as given from :meth:`ReportGenerator.prepare`
    tensors (preprocessing is per image, so both give the same values)."""
    import torch

    if images and all(isinstance(im, torch.Tensor) for im in images):
        return torch.stack(list(images))
    return pixel_values_for(list(images), bundle.image_processor, bundle.image_aspect_ratio)


def generate_reports(bundle: ModelBundle, images: Sequence[Image.Image], indications: Sequence[str | None] | None = None,
                     settings: GenerationSettings | None = None, **overrides: Any) -> list[str]:
    """Generate Findings for PIL images (greedy by default), in batches of ``settings.batch_size``."""
    settings = settings or GenerationSettings(**overrides)
    if indications is None:
        indications = [None] * len(images)
    if len(indications) != len(images):
        raise ValueError(f"got {len(images)} images but {len(indications)} indications")
    capped = [cap_indication(bundle.tokenizer, ind, settings) for ind in indications]
    for _, note in capped:
        if note:
            logger.warning("%s", note)
    indications = [ind for ind, _ in capped]
    results: list[str] = []
    for start in range(0, len(images), settings.batch_size):
        results.extend(_generate_batch(bundle, images[start:start + settings.batch_size],
                                       indications[start:start + settings.batch_size], settings))
    return results


class ReportGenerator:
    """Load a model once, then generate reports for images.

    >>> gen = ReportGenerator.from_pretrained("models/llava-rad")          # doctest: +SKIP
    >>> gen.generate("cxr.dcm", indication="Shortness of breath.")       # doctest: +SKIP
    'The lungs are clear. ...'
    """

    def __init__(self, bundle: ModelBundle, settings: GenerationSettings | None = None):
        self.bundle = bundle
        self.settings = settings or GenerationSettings()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
                        **settings: Any) -> ReportGenerator:
        from llavarad.model.build import load_model

        return cls(load_model(model_dir, device=device, dtype=dtype), GenerationSettings(**settings))

    def generate(self, image: str | Path | Image.Image, indication: str | None = None) -> str:
        """Findings for one image (a path to PNG/JPEG/DICOM, or a PIL image)."""
        return self.generate_many([image], [indication])[0]

    def generate_many(self, images: Sequence[str | Path | Image.Image],
                      indications: Sequence[str | None] | None = None) -> list[str]:
        """Findings for several images in batches; an image may also be a :meth:`prepare` tensor."""
        pils = [_to_pil(img) for img in images]
        return generate_reports(self.bundle, pils, indications, self.settings)

    def prepare(self, image: Image.Image):
        """The model input ``(3, size, size)`` float32 tensor of one PIL image. A server computes it on
        the request's thread and passes it to :meth:`generate_many`, so the model's thread only generates."""
        return pixel_values_for([image], self.bundle.image_processor, self.bundle.image_aspect_ratio)[0]


def _to_pil(image: str | Path | Image.Image) -> Image.Image:
    if isinstance(image, (str, Path)):
        from llavarad.io.images import read_cxr

        return read_cxr(image).image
    return image


@dataclass
class GenerationSummary:
    """What a batch job did; ``failed`` > 0 means the CLI exits non-zero."""

    total: int = 0
    skipped_done: int = 0
    generated: int = 0
    failed: int = 0
    seconds: float = 0.0
    output: str = ""
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["images_per_second"] = self.images_per_second
        return out


_LATERAL_VIEWS = {"LATERAL", "LL", "RL", "LAT", "LLD", "RLD"}


@dataclass
class _Row:
    id: str
    image: str
    indication: str | None
    reference: str | None
    line: int
    view: str | None = None


def _iter_rows(manifest: Path) -> Iterator[_Row | dict[str, Any]]:
    """Rows of an input manifest; malformed rows come back as error dicts instead of raising."""
    from llavarad.io.text import check_regular_file, iter_jsonl

    check_regular_file(manifest, "manifest")
    for item in iter_jsonl(manifest):
        line, obj = item.line, item.value
        if item.error is not None:  # one bad line is one error record, never a stopped batch
            yield {"id": f"line-{line}", "error": item.error}
            continue
        if not isinstance(obj, dict):
            yield {"id": f"line-{line}", "error": f"{manifest}:{line}: expected a JSON object"}
            continue
        rid = obj.get("id")
        image = obj.get("image")
        if rid is None or str(rid).strip() == "":
            yield {"id": f"line-{line}", "image": image, "error": f"{manifest}:{line}: field 'id' is missing"}
            continue
        if not isinstance(image, str) or not image.strip():
            yield {"id": str(rid), "image": image, "error": f"{manifest}:{line}: field 'image' is missing or not a path"}
            continue
        indication = obj.get("indication")
        reference = obj.get("reference", obj.get("findings"))
        if indication is not None and not isinstance(indication, str):
            yield {"id": str(rid), "image": image, "error": f"{manifest}:{line}: field 'indication' must be a string"}
            continue
        view = obj.get("view") if isinstance(obj.get("view"), str) else None
        yield _Row(str(rid), image, indication, reference if isinstance(reference, str) else None, line, view)


def _recorded_settings(bundle: ModelBundle, settings: GenerationSettings) -> dict[str, Any]:
    """The settings written into every output row (with what the folder and the device resolved to)."""
    return {**asdict(settings), "prompt_format": settings.prompt_format or bundle.prompt_format,
            "decoding": "greedy" if settings.num_beams == 1 else f"beam{settings.num_beams}",
            "dtype": str(next(bundle.model.parameters()).dtype).replace("torch.", ""),
            "device": str(next(bundle.model.parameters()).device)}


def _generate_isolated(bundle: ModelBundle, images: list[Any], indications: list[str | None],
                       settings: GenerationSettings) -> list[str | Exception]:
    """One batch; if it fails, each item alone, so one bad item costs only its own row."""
    try:
        return list(generate_reports(bundle, images, indications, settings))
    except Exception as exc:  # isolate the failing item(s): retry one by one
        logger.warning("batch of %d failed (%s); retrying items one at a time", len(images), exc)
    preds: list[str | Exception] = []
    for img, ind in zip(images, indications):
        try:
            preds.append(generate_reports(bundle, [img], [ind], settings)[0])
        except Exception as item_exc:  # noqa: BLE001 - recorded per row, run continues
            preds.append(item_exc)
    return preds


def _prepare(row: _Row, manifest: Path, bundle: ModelBundle, settings: GenerationSettings) -> tuple[Any, str | None]:
    """The row's image and warning (a cut indication, a lateral view); caps ``row.indication`` in place.

    Raises ImageReadError / OSError for an unusable image, IndicationTooLongError (naming the line)
    for an indication over the limit with ``long_indication="error"``.
    """
    from llavarad.io.images import read_cxr

    cxr = read_cxr(resolve_image_path(row.image, manifest))
    try:
        row.indication, warning = cap_indication(bundle.tokenizer, row.indication, settings)
    except IndicationTooLongError as exc:
        raise IndicationTooLongError(f"{manifest}:{row.line}: {exc}") from exc
    view = cxr.view or row.view
    if cxr.is_frontal is False or (view or "").upper() in _LATERAL_VIEWS:
        lateral = f"view {view!r} is not frontal; the model was trained on frontal (AP/PA) images"
        warning = f"{warning}; {lateral}" if warning else lateral
    return cxr.image, warning


def manifest_row_ids(manifest: str | Path) -> Iterator[str]:
    """The output id of every row of ``manifest``, in order, as :func:`run_generation` assigns them
    (a malformed row gets its ``line-N`` id): the order a merged sharded run is written in."""
    for row in _iter_rows(Path(manifest)):
        yield row["id"] if isinstance(row, dict) else row.id


def run_generation(model: str | Path | ModelBundle, manifest: str | Path, out: str | Path, *,
                   settings: GenerationSettings | None = None, device: str = "auto", dtype: str = "auto",
                   resume: bool = True, progress: Callable[[int, int], None] | None = None,
                   select: Callable[[str], bool] | None = None, skip: Container[str] = ()) -> GenerationSummary:
    """Generate for every row of ``manifest`` (JSONL: id, image, optional indication/reference) into
    ``out`` (JSONL predictions: id, image, indication, reference, prediction, error, model, settings).

    ``progress(done, total)`` is called after each batch. ``select(id)`` keeps only some rows (one
    rank's share of a sharded run, :mod:`llavarad.sharding`); ids in ``skip`` were finished elsewhere
    (another shard file) and count as already done. Returns a :class:`GenerationSummary`.
    """
    from llavarad.io.images import ImageReadError
    from llavarad.model.build import load_model

    settings = settings or GenerationSettings()
    manifest = Path(manifest)
    bundle = model if not isinstance(model, (str, Path)) else load_model(model, device=device, dtype=dtype)
    model_name = str(model) if isinstance(model, (str, Path)) else bundle.meta.get("name", bundle.preset.name)
    recorded = _recorded_settings(bundle, settings)
    rows = [r for r in _iter_rows(manifest)
            if select is None or select(r["id"] if isinstance(r, dict) else r.id)]
    summary = GenerationSummary(total=len(rows), output=str(out))
    start = time.perf_counter()
    with JsonlWriter(out, key="id", resume=resume) as writer:
        pending: list[tuple[_Row, Any, str | None]] = []

        def record(row: _Row | dict[str, Any], prediction: str | None, error: str | None, warning: str | None = None) -> None:
            if isinstance(row, dict):
                base = {"id": row["id"], "image": row.get("image"), "indication": None, "reference": None}
            else:
                base = {"id": row.id, "image": row.image, "indication": row.indication, "reference": row.reference}
            rec = {**base, "prediction": prediction, "error": error, "model": model_name, "settings": recorded}
            if warning:
                rec["warning"] = warning
            writer.write(rec)
            if error:
                summary.failed += 1
                summary.errors.append({"id": str(base["id"]), "error": error})
            else:
                summary.generated += 1

        def flush() -> None:
            if not pending:
                return
            preds = _generate_isolated(bundle, [img for _, img, _ in pending], [r.indication for r, _, _ in pending],
                                       settings)
            for (row, _, warning), pred in zip(pending, preds):
                if isinstance(pred, Exception):
                    record(row, None, f"generation failed: {type(pred).__name__}: {pred}")
                else:
                    record(row, pred, None, warning)
            pending.clear()
            if progress:
                progress(summary.generated + summary.failed + summary.skipped_done, summary.total)

        seen: set[str] = set()
        for row in rows:
            rid = row["id"] if isinstance(row, dict) else row.id
            if rid in seen:  # a repeated id cannot get its own output row: report it, don't drop it quietly
                summary.failed += 1
                summary.errors.append({"id": rid, "error": f"duplicate id {rid!r} in {manifest}; only the first is generated"})
                continue
            seen.add(rid)
            if rid in writer.done or rid in skip:
                summary.skipped_done += 1
                continue
            if isinstance(row, dict):
                record(row, None, row["error"])
                continue
            try:
                image, warning = _prepare(row, manifest, bundle, settings)
            except (ImageReadError, OSError, IndicationTooLongError) as exc:
                record(row, None, str(exc))
                continue
            pending.append((row, image, warning))
            if len(pending) >= settings.batch_size:
                flush()
        flush()
    summary.seconds = time.perf_counter() - start
    return summary
