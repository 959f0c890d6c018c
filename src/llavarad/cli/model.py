"""Model verbs: ``init`` (assemble a new model), ``generate`` (write findings), ``convert`` (release -> HF)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("init")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the new model to.")
@click.option("--preset", default=None, help="Random weights of a named preset (tiny, phantom, llava-rad-7b) or a preset .json.")
@click.option("--vision", "vision_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Dinov2 encoder folder (e.g. stage-1 output image_encoder/ or `convert --encoder-only`).")
@click.option("--lm", "lm_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="LLaMA-family language model folder with its tokenizer (e.g. vicuna-7b-v1.5).")
@click.option("--prompt-format", type=click.Choice(["plain", "v1"]), default=None,
              help="Prompt format recorded in the folder (default: plain for --vision/--lm, the preset's otherwise).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random projector / weights.")
@click.option("--overwrite", is_flag=True, help="Write into --out even if it is not empty.")
def init_cmd(out_dir: Path, preset: str | None, vision_dir: Path | None, lm_dir: Path | None,
             prompt_format: str | None, seed: int, overwrite: bool) -> None:
    """Assemble a new, untrained LLaVA-Rad model folder, as stage 2 starts from.

    \b
    Examples:
      llavarad init --vision runs/stage1/image_encoder --lm models/vicuna-7b-v1.5 --out runs/init
      llavarad init --preset tiny --out /tmp/tiny-model
    """
    from llavarad.model.build import init_from_parts, init_random, save_model
    from llavarad.model.presets import PresetError

    if (vision_dir is None) != (lm_dir is None):
        raise click.UsageError("--vision and --lm go together (or use --preset NAME for random weights)")
    if vision_dir is None and preset is None:
        raise click.UsageError("give --vision DIR --lm DIR, or --preset NAME (tiny, phantom, llava-rad-7b)")
    from llavarad.io.outputs import check_output

    check_output(out_dir, [vision_dir, lm_dir], kind="dir", overwrite=overwrite)
    try:
        if vision_dir is not None:
            bundle = init_from_parts(vision_dir, lm_dir, preset=preset or "llava-rad-7b", seed=seed,
                                     prompt_format=prompt_format or "plain")
        else:
            bundle = init_random(preset, seed=seed, prompt_format=prompt_format)
    except (PresetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    save_model(bundle, out_dir)
    n_params = sum(p.numel() for p in bundle.model.parameters())
    click.echo(f"wrote {out_dir} (preset {bundle.preset.name}, {n_params / 1e6:.2f}M parameters, "
               f"{bundle.num_image_tokens} image tokens, prompt format {bundle.prompt_format})")


@click.command("generate")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="llavarad model folder.")
@click.option("--indication", default=None, help="Indication (reason for exam) for the image(s).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Batch mode: JSONL with id, image, optional indication and reference.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Batch mode: predictions JSONL (resumed if it exists).")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--max-indication-tokens", default=512, show_default=True,
              help="Longest indication fed to the model; a longer one is cut and the cut recorded in the row.")
@click.option("--prompt-format", type=click.Choice(["plain", "v1"]), default=None,
              help="Override the folder's prompt format (v1 for fine-tuned models).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--dtype", default="auto", show_default=True, help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
@click.option("--no-resume", is_flag=True, help="Start the output file afresh instead of skipping finished ids.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image instead of plain text.")
@click.option("--format", "out_format", type=click.Choice(["jsonl", "fhir", "sr"]), default=None,
              help="IMAGE mode: jsonl (as --json), fhir (one FHIR R4 DiagnosticReport per line, preliminary) or sr "
                   "(a DICOM SR per DICOM image, written to --out-dir). See docs/integration.md.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for --format sr (one <SOP Instance UID>.dcm per image).")
@click.pass_context
def generate_cmd(ctx: click.Context, images: tuple[Path, ...], model_dir: Path, indication: str | None,
                 manifest: Path | None, out_path: Path | None, batch_size: int, max_new_tokens: int,
                 max_indication_tokens: int, prompt_format: str | None, device: str, dtype: str, no_resume: bool, as_json: bool,
                 out_format: str | None, out_dir: Path | None) -> None:
    """Write draft Findings for chest X-rays (PNG, JPEG or DICOM).

    \b
    Examples:
      llavarad generate cxr.dcm --model models/llava-rad --indication "Dyspnea."
      llavarad generate --model models/llava-rad --manifest test.jsonl --out preds.jsonl
      llavarad generate cxr.dcm --model models/llava-rad --format sr --out-dir drafts/
    """

    from llavarad.generate import GenerationSettings, ReportGenerator
    from llavarad.io.images import ImageReadError
    from llavarad.model.build import ModelFolderError, load_model
    from llavarad.report_formats import ReportFormatError
    from llavarad.sharding import device_for_rank, rank_info

    if manifest is None and not images:
        raise click.UsageError("give one or more IMAGE paths, or --manifest FILE --out FILE")
    if manifest is not None and (images or out_path is None):
        raise click.UsageError("--manifest needs --out and takes no IMAGE arguments")
    if manifest is not None and out_format in ("fhir", "sr"):
        raise click.UsageError("--format fhir|sr works on IMAGE arguments; a --manifest run writes predictions JSONL")
    if out_format == "sr" and out_dir is None:
        raise click.UsageError("--format sr writes one DICOM file per image: give --out-dir DIR")
    try:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, prompt_format=prompt_format,
                                      max_indication_tokens=max_indication_tokens)
        if manifest is not None:
            from llavarad.io.outputs import check_output

            check_output(out_path, [manifest, model_dir])
        bundle = load_model(model_dir, device=device_for_rank(device, rank_info()), dtype=dtype)
    except (ModelFolderError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

    if manifest is not None:
        _generate_manifest(ctx, bundle, manifest, out_path, settings, resume=not no_resume)
        return

    generator = ReportGenerator(bundle, settings)
    failed = 0
    if out_format in ("fhir", "sr"):
        from llavarad.cli._report_output import model_info, render
        from llavarad.report_formats import read_source_header

        info = model_info(model_dir, settings, bundle)
    for path in images:
        try:
            if out_format == "sr":  # a PNG/JPEG has no study to attach to: say so before generating
                read_source_header(path)
            text = generator.generate(path, indication=indication)
            if out_format in ("fhir", "sr"):
                click.echo(render(out_format, path, text, indication, info, out_dir))
                continue
        except (ImageReadError, OSError, ReportFormatError) as exc:
            failed += 1
            click.echo(f"error: {exc}", err=True)
            continue
        if as_json or out_format == "jsonl":
            click.echo(json.dumps({"image": str(path), "indication": indication, "prediction": text}))
        elif len(images) > 1:
            click.echo(f"== {path}\n{text}\n")
        else:
            click.echo(text)
    if failed:
        ctx.exit(1)


def _generate_manifest(ctx: click.Context, bundle, manifest: Path, out_path: Path, settings, *, resume: bool) -> None:
    """Batch mode, one process or one rank of a launched job (torchrun / accelerate launch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from llavarad.generate import run_generation
    from llavarad.sharding import merge_predictions, rank_info, run_sharded_generation, shards_dir, wait_for_all_ranks

    info = rank_info()
    sharded = info.world_size > 1 or shards_dir(out_path).is_dir()
    if sharded and not resume:
        raise click.UsageError(f"--no-resume cannot restart a sharded run: delete {out_path} and "
                               f"{shards_dir(out_path)} first")
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True, disable=info.rank != 0) as bar:
        task = bar.add_task("generating", total=None)
        report = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
        if sharded:
            summary = run_sharded_generation(bundle, manifest, out_path, rank=info.rank, world_size=info.world_size,
                                             settings=settings, progress=report)
        else:
            summary = run_generation(bundle, manifest, out_path, settings=settings, resume=resume, progress=report)
    where = f"rank {info.rank}/{info.world_size}: " if info.world_size > 1 else ""
    click.echo(f"{where}{summary.generated} generated, {summary.skipped_done} already done, {summary.failed} failed "
               f"of {summary.total} in {summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s) -> {summary.output}")
    for err in summary.errors[:20]:
        click.echo(f"  failed {err['id']}: {err['error']}", err=True)
    incomplete = False
    if sharded:
        wait_for_all_ranks(info)
        if info.rank == 0:
            merged = merge_predictions(manifest, out_path)
            click.echo(f"merged {merged.written} rows from {merged.shards} shard(s) -> {out_path}"
                       + (f"; {len(merged.missing)} rows still missing: rerun to finish them" if merged.missing else ""))
            incomplete = not merged.complete
    if summary.failed or incomplete:
        ctx.exit(1)


@click.command("merge-predictions")
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The manifest the sharded run was generating for (gives the row order).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The predictions file whose OUT.shards/ folder holds the per-rank shards.")
@click.option("--keep-shards", is_flag=True, help="Keep OUT.shards/ even when every row is merged.")
@click.pass_context
def merge_predictions_cmd(ctx: click.Context, manifest: Path, out_path: Path, keep_shards: bool) -> None:
    """Merge the per-rank shards of a multi-process `generate` run into OUT, in manifest order.

    The launched run does this itself at the end; use this verb after a crash, to see what is done.

    \b
    Example:
      llavarad merge-predictions --manifest test.jsonl --out preds.jsonl
    """
    from llavarad.sharding import merge_predictions, shards_dir

    if not shards_dir(out_path).is_dir():
        raise click.ClickException(f"{shards_dir(out_path)}: no shard folder; nothing to merge for {out_path}")
    merged = merge_predictions(manifest, out_path, remove_shards=not keep_shards)
    click.echo(f"merged {merged.written} rows from {merged.shards} shard(s) -> {out_path}"
               + (f" ({merged.duplicates} duplicate records ignored)" if merged.duplicates else ""))
    if merged.missing:
        click.echo(f"{len(merged.missing)} manifest rows have no prediction yet (e.g. {merged.missing[0]!r}); "
                   "rerun the same generate command to finish them", err=True)
        ctx.exit(1)


def register(group: click.Group) -> None:
    """Add the model verbs to the top-level group."""
    group.add_command(init_cmd)
    group.add_command(generate_cmd)
    group.add_command(merge_predictions_cmd)
    _add_convert(group)


def _add_convert(group: click.Group) -> None:
    """Register ``convert`` (released LLaVA-Rad weights -> llavarad folder)."""

    @group.command("convert")
    @click.option("--release", "release_dir", required=True, type=click.Path(path_type=Path),
                  help="Folder with the microsoft/llava-rad files (biomedclipcxr_518_checkpoint.pt, "
                       "non_lora_trainables.bin, adapter_config.json, adapter_model.bin, config.json).")
    @click.option("--base", "base_dir", type=click.Path(path_type=Path), default=None,
                  help="Local lmsys/vicuna-7b-v1.5 folder (weights + tokenizer). Not needed with --encoder-only.")
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="Folder to write the converted model (or encoder) to.")
    @click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
                  show_default=True, help="Weights dtype; auto keeps the base LM's (float16 for Vicuna), "
                                          "float32 for --encoder-only.")
    @click.option("--keep-lora", is_flag=True, help="Save the LM unmerged plus a peft adapter in OUT/lora "
                                                     "instead of merging W + (alpha/r)·B·A.")
    @click.option("--encoder-only", is_flag=True, help="Export only the image encoder as a Dinov2 folder "
                                                        "(for stage 1 or `init --vision`).")
    @click.option("--clip", "clip", is_flag=True, help="Export the whole BiomedCLIP-CXR dual encoder (image and "
                                                       "text tower) as a CLIP folder for `llavarad retrieval`.")
    @click.option("--text-base", type=click.Path(path_type=Path), default=None,
                  help="With --clip: local BiomedBERT folder (config + tokenizer; the release has none).")
    @click.option("--preset", default="llava-rad-7b", show_default=True,
                  help="Architecture preset the release follows (heads, feature layer, prompt format).")
    @click.option("--vision-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="The encoder's open_clip config whose preprocess_cfg sets the image processor "
                       "(default: biomedclip_cxr_518.json in --release when there, else open_clip's defaults).")
    @click.option("--overwrite", is_flag=True, help="Write into --out even if it is not empty.")
    def convert_cmd(release_dir: Path, base_dir: Path | None, out_dir: Path, dtype: str, keep_lora: bool,
                    encoder_only: bool, clip: bool, text_base: Path | None, preset: str,
                    vision_config: Path | None, overwrite: bool) -> None:
        """Convert the released LLaVA-Rad weights into one llavarad / Hugging Face model folder.

        \b
        Examples:
          llavarad convert --release models/llava-rad --base models/vicuna-7b-v1.5 --out models/llava-rad-hf
          llavarad convert --release models/llava-rad --out models/biomedclip-cxr-518 --encoder-only
          llavarad convert --release models/llava-rad --clip --text-base models/BiomedBERT --out models/biomedclip-cxr
        """
        import time

        from llavarad.io.outputs import check_output
        from llavarad.model.convert import ConversionError, convert_biomedclip, convert_encoder, convert_release
        from llavarad.model.presets import PresetError, load_preset

        if encoder_only and keep_lora:
            raise click.UsageError("--keep-lora has no meaning with --encoder-only")
        if clip and (encoder_only or keep_lora):
            raise click.UsageError("--clip writes the whole dual encoder: drop --encoder-only / --keep-lora")
        check_output(out_dir, [release_dir, base_dir, text_base], kind="dir", overwrite=overwrite)
        start = time.perf_counter()
        if clip:
            if text_base is None:
                raise click.UsageError("--clip needs --text-base (a local BiomedBERT folder with its tokenizer)")
            try:  # attention heads cannot be read from weights: the preset says (12 for the release)
                heads = int(load_preset(preset).vision["num_attention_heads"])
                convert_biomedclip(release_dir, text_base, out_dir, num_attention_heads=heads)
            except (ConversionError, PresetError) as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"wrote CLIP folder {out_dir} (image + text tower, heads) in {time.perf_counter() - start:.1f} s")
            return
        try:
            if encoder_only:
                report = convert_encoder(release_dir, out_dir, dtype="float32" if dtype == "auto" else dtype,
                                         preset=preset, vision_config=vision_config)
            else:
                report = convert_release(release_dir, base_dir, out_dir, dtype=dtype, keep_lora=keep_lora,
                                         preset=preset, vision_config=vision_config)
        except (ConversionError, PresetError) as exc:
            raise click.ClickException(str(exc)) from exc
        seconds = time.perf_counter() - start
        if encoder_only:
            click.echo(f"wrote Dinov2 encoder {out_dir} ({report.vision_tensors} tensors, {report.image_size} px, "
                       f"{report.dtype}; {report.ignored_vision_keys} text-tower/head keys ignored) in {seconds:.1f} s")
        else:
            lora = (f"LoRA merged ({report.lora_modules} modules, scale {report.lora_scale:g})" if report.lora == "merged"
                    else f"LoRA kept in {out_dir / 'lora'} ({report.lora_modules} modules)")
            click.echo(f"wrote {out_dir}: vision {report.vision_tensors} tensors ({report.image_size} px), projector, "
                       f"{report.base_tensors} base LM tensors, {lora}, vocab {report.vocab_size} "
                       f"(<image> = {report.image_token_id}), {report.dtype}, in {seconds:.1f} s")
