"""The whole system end to end on synthetic phantoms, on CPU: ``llavarad demo --out DIR``.

Stages (each writes a sub-folder of ``DIR``; a stage whose output exists is skipped, so an
interrupted demo resumes where it stopped):

1. ``phantoms/``  procedurally drawn chest radiographs with known findings, reports, indications
2. ``lm/``        tokenizer + tiny LLaMA pretrained on the training reports (Vicuna's stand-in)
3. ``stage1/``    CLIP-style encoder pretraining; ``stage1/image_encoder`` is a Dinov2 folder
4. ``init/``      stage-1 image tower + pretrained LM + new projector (``init_from_parts``)
5. ``stage2/``    alignment (projector only, "plain" format)
6. ``stage3/``    LoRA fine-tuning ("v1" with the indication), merged
7. ``predictions.jsonl`` generation on the held-out test phantoms; ``eval/`` the evaluation
8. ``explain/``   word-level attention maps of one held-out phantom
9. ``report_card.html`` (self-contained: phantoms beside reference and generated findings, the
   per-observation F1 plot, one word's heat map, stage timings), ``.md`` and ``.json``

``blank_images`` runs the same pipeline with every image replaced by a uniform grey one (a
control: a model that reads the image must do far better than this). ``coded_images`` replaces
every image by a code of its findings, one square per finding category with its own place and
grey level (a control at the other end: the image is trivially readable, so the score measures
how well stages 1-3 learn to carry an unmistakable image signal into the report in the demo's
budget; a low score there means the image path is broken, not the phantoms too hard).
``shared_from`` reuses the phantoms and language model of another demo folder, and its stage-1
encoder too unless ``coded_images`` (coded images need an encoder trained on them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llavarad.phantom._demo_config import DemoConfig

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "STAGES", "coded_image", "evaluate_stage2_only", "run_demo"]

STAGES = ("phantoms", "lm", "stage1", "init", "stage2", "stage3", "generate", "evaluate", "report")
ProgressFn = Callable[[str, str, "float | None"], None]


class _Timer:
    """Per-stage timings, kept in ``timings.json`` across resumed runs."""

    def __init__(self, out: Path, progress: ProgressFn | None):
        self.path = out / "timings.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.progress = progress

    def run(self, stage: str, done: bool, fn: Callable[[], Any]) -> Any:
        if done:
            self._say(stage, "done earlier, skipped", None)
            return None
        self._say(stage, "running", None)
        t0, c0 = time.time(), time.process_time()
        result = fn()
        self.data[stage] = round(time.time() - t0, 2)
        # CPU seconds of this process (all threads): comparable across runs on a busy machine
        self.data.setdefault("cpu_s", {})[stage] = round(time.process_time() - c0, 2)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        self._say(stage, "finished", self.data[stage])
        return result

    def _say(self, stage: str, status: str, seconds: float | None) -> None:
        logger.info("demo %s: %s%s", stage, status, f" ({seconds:.1f} s)" if seconds is not None else "")
        if self.progress is not None:
            self.progress(stage, status, seconds)


def _is_model(folder: Path) -> bool:
    return (folder / "llavarad.json").is_file() and any(folder.glob("*.safetensors"))


def _manifest_with_images(src: Path, target: Path, image_for: Callable[[int, dict[str, Any]], Path]) -> Path:
    """A copy of the manifest ``src`` at ``target`` with each row's image replaced by ``image_for(line, row)``.

    Written to a temporary file and renamed, so a killed run never leaves a partial manifest.
    """
    from llavarad.io.manifest import read_jsonl

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as fh:
        for line_no, row in read_jsonl(src):
            fh.write(json.dumps({**row, "image": str(image_for(line_no, row).resolve())}) + "\n")
    partial.replace(target)
    return target


def _save_whole(image, path: Path) -> None:
    """Save a PIL image as PNG via a temporary name, so a file at ``path`` is always complete."""
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def _blank_manifest(src: Path, out_dir: Path, size: int) -> Path:
    """A copy of ``src`` with every image replaced by one uniform grey PNG."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    blank = out_dir / "blank.png"
    _save_whole(Image.new("L", (size, size), 128), blank)
    return _manifest_with_images(src, out_dir / "manifest.jsonl", lambda line_no, row: blank)


#: Where each finding category's square sits in the coded images: a 4 x 4 grid, a checkerboard
#: of cells so that no two codes touch (row, column).
_CODE_CELLS = ((0, 0), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2), (3, 1), (3, 3))


def coded_image(categories: set[str], size: int):
    """A dark image with one square (a quarter of the side) per present finding category.

    Each category has its own place and its own grey level (110, 130, ... 250 in the order of
    ``CATEGORIES``), so a finding is told apart by what its image tokens contain, not only by where
    they are. A one-pixel frame (grey 100) keeps an image without findings from being uniform,
    which the image reader would flag as blank.
    """
    import numpy as np
    from PIL import Image

    from llavarad.phantom import CATEGORIES

    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown finding categories {unknown}; expected some of {', '.join(CATEGORIES)}")
    pixels = np.full((size, size), 100, dtype=np.uint8)
    pixels[1:-1, 1:-1] = 60
    cell = size // 4
    for k, (category, (row, col)) in enumerate(zip(CATEGORIES, _CODE_CELLS)):
        if category in categories:
            pixels[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = 110 + 20 * k
    return Image.fromarray(pixels)  # uint8 (size, size): an "L" image


def _coded_manifest(src: Path, out_dir: Path, size: int) -> Path:
    """A copy of ``src`` with every image replaced by :func:`coded_image` of its findings."""
    from llavarad.phantom import DEVICES

    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)

    def image_for(line_no: int, row: dict[str, Any]) -> Path:
        path = images / f"{row['id']}.png"
        if not path.is_file():  # always complete (_save_whole), so a resumed run reuses it
            found = {f["finding"] for f in row.get("phantom_findings") or []}
            try:
                image = coded_image({"support_devices" if f in DEVICES else f for f in found}, size)
            except ValueError as exc:
                raise ValueError(f"{src} line {line_no} (record {row['id']!r}): {exc}") from exc
            _save_whole(image, path)
        return path

    return _manifest_with_images(src, out_dir / "manifest.jsonl", image_for)


def _test_manifest(src: Path, out: Path, limit: int | None) -> Path:
    """The test split of ``src`` with absolute image paths (generation input)."""
    from llavarad.io.manifest import read_jsonl, resolve_image_path

    rows = [row for _, row in read_jsonl(src) if row.get("split") == "test"]
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ValueError(f"{src}: no test-split records to evaluate on; raise n")
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({**row, "image": str(resolve_image_path(row["image"], src))}) + "\n")
    return out


def _train_common(cfg: DemoConfig, model: Path, manifest: Path, out: Path) -> dict[str, Any]:
    per_device = cfg.batch_size
    return dict(model=str(model), train_manifest=str(manifest), output_dir=str(out), global_batch_size=per_device,
                per_device_batch_size=per_device, warmup_ratio=0.03, max_length=512, logging_steps=10,
                eval_steps=0, save_steps=100, save_total_limit=1, num_workers=0, device=cfg.device,
                precision="bf16" if cfg.device == "cuda" else "fp32",
                gradient_checkpointing=False, seed=cfg.seed)


def _generate(model: Path, test_manifest: Path, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from llavarad.generate import GenerationSettings, run_generation

    summary = run_generation(model, test_manifest, out, device=cfg.device,
                             dtype="auto" if cfg.device == "cuda" else "float32",
                             settings=GenerationSettings(max_new_tokens=cfg.max_new_tokens, batch_size=32))
    return summary.to_dict()


def _evaluate(predictions: Path, out: Path, plot: bool = False) -> dict[str, Any]:
    from llavarad.evaluate.run import EvaluateConfig, evaluate

    try:
        from llavarad.evaluate.labelers import get_labeler

        labeler = get_labeler("rules")
    except ImportError:  # the labeler registry lands separately; the rule labeler is the same thing
        from llavarad.evaluate.rule_labeler import RuleLabeler

        labeler = RuleLabeler()
    return evaluate(predictions, out, EvaluateConfig(labeler="rules", radgraph="off", bootstrap=200, plot=plot),
                    labeler=labeler)


def run_demo(cfg: DemoConfig, out_dir: str | Path, *, fresh: bool = False,
             progress: ProgressFn | None = None, train_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run every demo stage into ``out_dir`` (skipping finished ones unless ``fresh``); return the card.

    ``progress(stage, status, seconds)`` hears each stage start and end; ``train_callbacks``
    (``transformers.TrainerCallback``) follow the optimizer steps of stages 1-3 (the CLI's bar).
    """
    import shutil

    from llavarad.phantom.report_card import write_card

    out = Path(out_dir)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer(out, progress)
    base = Path(cfg.shared_from) if cfg.shared_from else out
    lm_dir, stage1_dir = base / "lm", base / "stage1"
    manifest, train_manifest = _data(cfg, out, base, timer)
    if cfg.coded_images:
        stage1_dir = out / "stage1"  # an encoder that has seen the codes, not the shared one
    _make_lm(cfg, manifest, lm_dir, timer)
    s1_manifest = train_manifest if cfg.shared_from is None or cfg.coded_images else manifest
    _make_stage1(cfg, s1_manifest, stage1_dir, timer, train_callbacks)
    s3_dir = _stages_2_3(cfg, out, train_manifest, lm_dir, stage1_dir, timer, train_callbacks)

    test_manifest = _test_manifest(train_manifest, out / "test_manifest.jsonl", cfg.max_test)
    predictions = out / "predictions.jsonl"
    timer.run("generate", (out / "GENERATED").is_file(),
              lambda: (_generate(s3_dir, test_manifest, predictions, cfg), (out / "GENERATED").touch()))
    eval_dir = out / "eval"
    timer.run("evaluate", (eval_dir / "metrics.json").is_file(), lambda: _evaluate(predictions, eval_dir, plot=True))
    timer.run("explain", (out / "explain" / "chosen.json").is_file(),
              lambda: _explain_one(s3_dir, predictions, out / "explain", cfg))

    card = write_card(cfg, out, manifest, lm_dir, stage1_dir, predictions, eval_dir, timer.data)
    timer._say("report", f"written to {out / 'report_card.html'} (and .md, .json)", None)
    return card


def _data(cfg: DemoConfig, out: Path, base: Path, timer: _Timer) -> tuple[Path, Path]:
    """The phantoms' manifest and the one stages 1-3 train on (blank or coded for the controls)."""
    phantoms = base / "phantoms"
    manifest = phantoms / "manifest.jsonl"

    def make_phantoms():
        from llavarad.phantom import generate_phantoms

        return generate_phantoms(cfg.phantom_config(), phantoms, workers=cfg.phantom_workers).to_dict()

    timer.run("phantoms", manifest.is_file() and (phantoms / "DONE").is_file(), make_phantoms)
    (phantoms / "DONE").touch()
    if cfg.blank_images:
        return manifest, _blank_manifest(manifest, out / "blank", cfg.image_size)
    if cfg.coded_images:
        return manifest, _coded_manifest(manifest, out / "coded", cfg.image_size)
    return manifest, manifest


def _make_lm(cfg: DemoConfig, manifest: Path, lm_dir: Path, timer: _Timer) -> None:
    def make_lm():
        from llavarad.io.manifest import read_manifest
        from llavarad.phantom.lm_pretrain import lm_training_texts, pretrain_lm

        recs = [r for r in read_manifest(manifest) if r.split == "train" and r.findings]
        return pretrain_lm(lm_training_texts([r.indication for r in recs], [r.findings for r in recs]), lm_dir, cfg.lm)

    timer.run("lm", (lm_dir / "lm_summary.json").is_file(), make_lm)


def _make_stage1(cfg: DemoConfig, manifest: Path, stage1_dir: Path, timer: _Timer,
                 train_callbacks: Sequence[Any]) -> None:
    def make_stage1():
        from llavarad.train.stage1_encoder import Stage1Config, run_stage1

        s1 = Stage1Config(manifest=str(manifest),
                          output_dir=str(stage1_dir), val_manifest=str(manifest), val_splits=["validate"],
                          preset=cfg.preset, image_size=cfg.image_size, embed_dim=128, context_length=96,
                          tokenizer_vocab_size=1000, epochs=cfg.stage1_epochs, per_device_batch_size=cfg.stage1_batch,
                          lr=cfg.stage1_lr, warmup_ratio=cfg.stage1_warmup, image_pool=cfg.stage1_image_pool,
                          weight_decay=0.05, mixed_precision="no", augment=False, num_workers=0,
                          seed=cfg.seed, save_every_steps=10_000, log_every_steps=10)
        return str(run_stage1(s1, callbacks=train_callbacks))

    timer.run("stage1", (stage1_dir / "image_encoder" / "config.json").is_file(), make_stage1)


def _stages_2_3(cfg: DemoConfig, out: Path, train_manifest: Path, lm_dir: Path, stage1_dir: Path, timer: _Timer,
                train_callbacks: Sequence[Any]) -> Path:
    """Assemble the start model, run stages 2 and 3; return the stage-3 folder."""
    from llavarad.config import config_from_dict
    from llavarad.train.stage2_align import Stage2Config, run_stage2
    from llavarad.train.stage3_finetune import Stage3Config, run_stage3

    init_dir = out / "init"

    def make_init():
        from llavarad.model.build import init_from_parts, save_model

        bundle = init_from_parts(stage1_dir / "image_encoder", lm_dir, preset=cfg.preset, seed=cfg.seed,
                                 prompt_format="plain")
        save_model(bundle, init_dir)

    timer.run("init", _is_model(init_dir), make_init)
    s2_dir, s3_dir = out / "stage2", out / "stage3"
    s2 = config_from_dict(Stage2Config, {**_train_common(cfg, init_dir, train_manifest, s2_dir),
                                         "learning_rate": cfg.stage2_lr, "epochs": cfg.stage2_epochs})
    timer.run("stage2", _is_model(s2_dir), lambda: run_stage2(s2, callbacks=train_callbacks))
    s3 = config_from_dict(Stage3Config, {**_train_common(cfg, s2_dir, train_manifest, s3_dir),
                                         "learning_rate": cfg.stage3_lr, "epochs": cfg.stage3_epochs,
                                         "lora": {"r": cfg.lora_r, "alpha": 2 * cfg.lora_r,
                                                  "dropout": cfg.lora_dropout}})
    timer.run("stage3", _is_model(s3_dir), lambda: run_stage3(s3, callbacks=train_callbacks))
    return s3_dir


def _explain_one(model_dir: Path, predictions: Path, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Word-level attention maps for the first held-out phantom with a finding (else the first one),
    written by :func:`llavarad._attention_render.write_explanation`; ``chosen.json`` names the
    word the report card shows (:func:`llavarad.phantom.report_card.choose_word`)."""
    from llavarad._attention_render import write_explanation
    from llavarad.attention import explain
    from llavarad.io.images import read_cxr
    from llavarad.io.manifest import read_jsonl
    from llavarad.model.build import load_model
    from llavarad.phantom.report_card import choose_word

    rows = [row for _, row in read_jsonl(predictions) if not row.get("error")]
    if not rows:
        raise ValueError(f"{predictions}: no generated report to explain")
    row = next((r for r in rows if "normal" not in (r.get("reference") or "").lower()), rows[0])
    bundle = load_model(model_dir, device=cfg.device, dtype="float32" if cfg.device == "cpu" else "auto")
    image = read_cxr(row["image"]).image
    expl = explain(bundle, image, row.get("indication"), max_new_tokens=cfg.max_new_tokens)
    write_explanation(expl, image, out)
    index = choose_word([w["word"] for w in expl.words])
    if index is None:
        raise ValueError(f"the model generated no words for {row['id']}; nothing to explain")
    image.convert("RGB").save(out / "image.png")
    overlay = sorted((out / "overlays").glob(f"{index:03d}_*.png"))[0]
    chosen = {"id": row["id"], "word": expl.words[index]["word"], "text": expl.text, "image": "image.png",
              "overlay": overlay.relative_to(out).as_posix()}
    (out / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n", encoding="utf-8")
    return chosen


def evaluate_stage2_only(demo_dir: str | Path, cfg: DemoConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """The paper's Variant #5: generate with the stage-2 model alone ("plain", no indication) and evaluate."""
    out = Path(demo_dir)
    timer = _Timer(out, progress)
    preds = out / "stage2_only" / "predictions.jsonl"
    preds.parent.mkdir(parents=True, exist_ok=True)
    timer.run("generate_stage2_only", (preds.parent / "GENERATED").is_file(),
              lambda: (_generate(out / "stage2", out / "test_manifest.jsonl", preds, cfg),
                       (preds.parent / "GENERATED").touch()))
    eval_dir = preds.parent / "eval"
    if not (eval_dir / "metrics.json").is_file():
        _evaluate(preds, eval_dir)
    return json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
