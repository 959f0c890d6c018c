"""CLI verbs for training: ``train stage1|stage2|stage3``, ``merge-lora`` and ``demo``.

Heavy imports (torch, transformers, peft) happen inside the commands so ``llavarad --help`` stays
fast. Each command prints a short summary and exits non-zero on failure.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

_OVERRIDES_HELP = "KEY=VALUE overrides of the YAML, e.g. learning_rate=2e-4 lora.r=16 max_steps=10."


def packaged_configs() -> Path:
    """The run YAMLs and accelerate/DeepSpeed files shipped inside the package (``llavarad/configs``)."""
    return Path(__file__).resolve().parents[1] / "configs"


def resolve_config(config: Path) -> Path:
    """``config`` itself when it exists; otherwise, for ``configs/<name>``, the packaged file of
    that name, so the commands written in the YAMLs work from an installed wheel too."""
    config = Path(config)
    if config.is_file():
        return config
    if config.parts and config.parts[0] == "configs":
        packaged = packaged_configs().joinpath(*config.parts[1:])
        if packaged.is_file():
            return packaged
    names = ", ".join(sorted(p.name for p in packaged_configs().glob("*.yaml")))
    raise click.BadParameter(f"{config}: no such file, and no packaged config of that name (packaged: {names}); "
                             "`llavarad configs --copy DIR` copies them out to edit", param_hint="--config")


def _load(cls, config: Path, overrides: tuple[str, ...]):
    from llavarad.config import ConfigError, load_config

    try:
        return load_config(cls, resolve_config(config), overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_summary(out: Path) -> None:
    summary_path = Path(out) / "train_summary.json"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text(encoding="utf-8"))
        click.echo(f"steps {s.get('global_steps')}  loss {s.get('first_loss')} -> {s.get('final_loss')}  "
                   f"eval loss {s.get('final_eval_loss')}  examples {s.get('train_examples')} "
                   f"(excluded {s.get('excluded', 0)})")


def _check_output_dir(cfg) -> None:
    """A run may resume in its own output_dir, never write into its model or over a manifest."""
    from llavarad.io.outputs import check_output

    inputs = [getattr(cfg, name, None) for name in ("model", "train_manifest", "val_manifest", "manifest")]
    check_output(cfg.output_dir, inputs, kind="dir", resumable=True, flag="output_dir")


def _run_stage(stage: str, config: Path, overrides: tuple[str, ...]) -> Path:
    """Run one stage with the progress bar and ``run.log`` in its output folder."""
    from llavarad.cli._progress import TrainerProgress, log_to_file

    if stage == "stage1":
        from llavarad.train.stage1_encoder import Stage1Config as cls
        from llavarad.train.stage1_encoder import run_stage1 as runner
    elif stage == "stage2":
        from llavarad.train.stage2_align import Stage2Config as cls
        from llavarad.train.stage2_align import run_stage2 as runner
    else:
        from llavarad.train.stage3_finetune import Stage3Config as cls
        from llavarad.train.stage3_finetune import run_stage3 as runner
    cfg = _load(cls, config, overrides)
    _check_output_dir(cfg)
    with log_to_file(Path(cfg.output_dir) / "run.log") as log_path:
        logging.getLogger(__name__).info("%s: %s %s", stage, config, " ".join(overrides))
        try:  # a NaN/inf loss or gradient norm stops the run (NonFiniteLossCallback, in every stage's Trainer)
            out = Path(runner(cfg, callbacks=[TrainerProgress(label=stage)]))
        except ValueError as exc:  # a setting that only fails once the data is seen (e.g. batch arithmetic)
            raise click.ClickException(str(exc)) from exc
    click.echo(f"full log: {log_path}")
    return out


def register(group: click.Group) -> None:
    """Add ``train``, ``merge-lora``, ``demo`` and ``configs`` to the top-level group."""
    _register_train(group)
    _register_merge_lora(group)
    _register_demo(group)
    _register_configs(group)


def _register_train(group: click.Group) -> None:

    @group.group("train")
    def train() -> None:
        """Train the three stages: stage1 (encoder), stage2 (alignment), stage3 (LoRA fine-tuning).

        \b
        Example:
          llavarad train stage2 --config configs/stage2_tiny.yaml max_steps=4
          accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml \\
              -m llavarad.cli train stage3 --config configs/stage3_llava-rad-7b.yaml
        """

    for stage, what in (("stage1", "CLIP-style encoder pretraining (image tower exported as a Dinov2 folder)"),
                        ("stage2", "alignment: train the projector only, 'plain' format"),
                        ("stage3", "fine-tuning: LoRA on the LM + projector, 'v1' format with indication")):

        def make(stage: str = stage, what: str = what):
            @train.command(stage, help=f"Stage {stage[-1]}, {what}.\n\n\b\nExample:\n  llavarad train {stage} "
                                       f"--config configs/{stage}_tiny.yaml output_dir=runs/{stage}")
            @click.option("--config", "config", type=click.Path(path_type=Path), required=True,
                          help="Run YAML (see configs/).")
            @click.argument("overrides", nargs=-1)
            def command(config: Path, overrides: tuple[str, ...]) -> None:
                from llavarad.train.distributed import is_main

                t0 = time.time()
                out = _run_stage(stage, config, overrides)
                if is_main():  # one summary per launched job, not one per process
                    click.echo(f"{stage} finished in {time.time() - t0:.1f} s -> {out}")
                    _print_summary(out)

            command.__doc__ = _OVERRIDES_HELP
            return command

        make()


def _register_merge_lora(group: click.Group) -> None:
    @group.command("merge-lora")
    @click.option("--adapter", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
                  help="Adapter folder written by stage 3 with export=adapter.")
    @click.option("--out", type=click.Path(path_type=Path), required=True, help="Merged model folder to write.")
    @click.option("--base", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
                  help="Base model folder (default: the one recorded in the adapter).")
    @click.option("--overwrite", is_flag=True, help="Write into --out even if it is not empty.")
    def merge_lora_cmd(adapter: Path, out: Path, base: Path | None, overwrite: bool) -> None:
        """Merge a stage-3 LoRA adapter into its base model, writing a plain model folder.

        \b
        Example:
          llavarad merge-lora --adapter runs/stage3_adapter --out runs/stage3_merged
        """
        from llavarad.train.lora import merge_lora

        merge_lora(adapter, out, base_model=base, overwrite=overwrite)
        click.echo(f"merged model written to {out}")


def _register_demo(group: click.Group) -> None:
    @group.command("demo")
    @click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for every stage's output.")
    @click.option("--n", "n_images", type=int, default=None, help="Number of phantoms (default: the demo's setting).")
    @click.option("--blank-images", is_flag=True, help="Train and evaluate on blank images (a control run).")
    @click.option("--coded-images", is_flag=True,
                  help="Train and evaluate on images that draw each finding category as a square with its own place "
                       "and grey level (a control run: what stages 1-3 make of an unmistakable image signal).")
    @click.option("--fresh", is_flag=True, help="Redo every stage even when its output exists.")
    @click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
    def demo_cmd(out: Path, n_images: int | None, blank_images: bool, coded_images: bool, fresh: bool,
                 overrides: tuple[str, ...]) -> None:
        """Run the whole system on synthetic phantoms on CPU and write a report card.

        Phantoms -> tokenizer + tiny language model -> stage 1 -> assembly -> stage 2 -> stage 3 ->
        generation on held-out phantoms -> evaluation -> DIR/report_card.html (and .md, .json). Stages whose
        output exists are skipped, so an interrupted demo resumes. KEY=VALUE arguments override
        fields of the demo's settings (llavarad.phantom.demo.DemoConfig), e.g. stage3_epochs=3.

        \b
        Examples:
          llavarad demo --out demo_run
          llavarad demo --out demo_long stage1_image_pool=max stage3_epochs=3
        """
        from llavarad.cli._progress import TrainerProgress, log_to_file, progress_bar
        from llavarad.config import ConfigError, load_config
        from llavarad.phantom.demo import DemoConfig, run_demo

        # the options win over KEY=VALUE; an option left unset leaves the override (or default) alone
        flags = ["blank_images=true"] if blank_images else []
        flags += ["coded_images=true"] if coded_images else []
        flags += [] if n_images is None else [f"n={n_images}"]
        try:
            cfg = load_config(DemoConfig, None, [*overrides, *flags])
        except (ConfigError, ValueError) as exc:
            raise click.UsageError(str(exc)) from exc

        bar = progress_bar()

        def progress(stage: str, status: str, seconds: float | None) -> None:
            tail = f" ({seconds:.1f} s)" if seconds is not None else ""
            bar.console.print(f"[bold]{stage}[/bold]: {status}{tail}")

        try:
            with bar, log_to_file(Path(out) / "demo.log"):
                card = run_demo(cfg, out, fresh=fresh, progress=progress, train_callbacks=[TrainerProgress(bar)])
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"report card: {Path(out) / 'report_card.html'}")
        for name, value in card.get("headline", {}).items():
            click.echo(f"  {name}: {value}")


def _register_configs(group: click.Group) -> None:
    @group.command("configs")
    @click.option("--copy", "copy_to", type=click.Path(path_type=Path, file_okay=False), default=None,
                  help="Copy the packaged configs (and accelerate/) into this folder to edit them.")
    def configs_cmd(copy_to: Path | None) -> None:
        """List the run YAMLs shipped with llavarad (``--config configs/<name>`` finds them even when
        the working directory has no configs/ folder), or copy them out.

        \b
        Examples:
          llavarad configs
          llavarad configs --copy my_configs && llavarad train stage2 --config my_configs/stage2_tiny.yaml
        """
        import shutil

        root = packaged_configs()
        if copy_to is not None:
            shutil.copytree(root, copy_to, dirs_exist_ok=True)
            click.echo(f"copied {root} -> {copy_to}")
            return
        click.echo(f"packaged configs: {root}")
        for path in sorted(root.rglob("*")):
            if path.is_file():
                click.echo(f"  configs/{path.relative_to(root).as_posix()}")
