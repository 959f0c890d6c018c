"""Stages 2-3 on two processes, actually run on CPU (gloo):

- through the shipped CLI path under ``accelerate launch`` (DDP), and under DeepSpeed ZeRO-2/3 when
  deepspeed is installed: the loss curve equals the one-process run with the same global batch,
  the saved model is gathered and loads with plain ``from_pretrained``, and resume is exact;
- PyTorch FSDP2 (``fully_shard`` per decoder layer, the sharding accelerate's FSDP plugin applies on
  GPUs) on the tiny model with stage 2's frozen/trainable split: the same loss curve as one process,
  and the gathered full state dict saves as a model folder that ``from_pretrained`` loads.
  accelerate itself refuses FSDP on CPU (its state turns a CPU run into MULTI_CPU), so the plugin
  path is exercised by benchmarks/gpu_suite.sh on a GPU; docs/training.md records the details.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
FINDINGS = ["The heart is enlarged.", "No pleural effusion.", "Small left pneumothorax.", "Lungs are clear."]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, shared_data) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("mp_data")
    for i, src in enumerate(sorted((shared_data / "images").glob("0000*.png"))[:4]):
        with Image.open(src) as im:
            im.convert("L").resize((64, 64)).save(root / f"img{i}.png")
    rows = [{"id": f"r{i}", "image": f"img{i % 4}.png", "dataset": "test", "split": "train",
             "indication": "Cough.", "findings": FINDINGS[i % 4]} for i in range(8)]
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(stage: str, model: Path, manifest: Path, out: Path, *, launch: list[str] | None, extra=()) -> str:
    args = ["-m", "llavarad", "train", stage, "--config", str(REPO / f"configs/{stage}_tiny.yaml"), f"model={model}",
            f"train_manifest={manifest}", f"output_dir={out}", "max_steps=4", "save_steps=2", "eval_steps=0",
            "global_batch_size=4", "per_device_batch_size=2", "logging_steps=1", *extra]
    cmd = [sys.executable, *(launch or []), *args] if launch is None else \
        [sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_ip", "127.0.0.1",
         "--main_process_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "train_loss" not in r]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _same_weights(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


DDP = ["--cpu", "--num_processes", "2"]


@pytest.mark.slow  # four training subprocesses: ~60 s on 2 cores
def test_stage2_and_stage3_on_two_processes_equal_one_process(tiny_model_dir, manifest, tmp_path):
    from transformers import LlavaForConditionalGeneration

    one, two = tmp_path / "s2_one", tmp_path / "s2_two"
    _train("stage2", tiny_model_dir, manifest, one, launch=None)
    log = _train("stage2", tiny_model_dir, manifest, two, launch=DDP)
    assert log.count("stage2 finished") == 1  # one summary, from rank 0
    # same global batch (2 x 2 processes vs 2 x 2 accumulation steps): same samples per optimizer step
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    assert _same_weights(_weights(one), _weights(two), atol=1e-6)
    LlavaForConditionalGeneration.from_pretrained(two)  # the gathered folder is a plain HF model

    s3_one, s3_two = tmp_path / "s3_one", tmp_path / "s3_two"
    _train("stage3", one, manifest, s3_one, launch=None)
    _train("stage3", one, manifest, s3_two, launch=DDP)
    assert _losses(s3_two) == pytest.approx(_losses(s3_one), rel=1e-5)
    assert _same_weights(_weights(s3_one), _weights(s3_two), atol=1e-5)


@pytest.mark.slow
def test_two_process_resume_is_exact(tiny_model_dir, manifest, tmp_path):
    out = tmp_path / "run"
    _train("stage3", tiny_model_dir, manifest, out, launch=DDP, extra=["learning_rate=1e-2"])
    straight = _weights(out)
    shutil.rmtree(out / "checkpoint-4")
    for f in out.glob("*.safetensors"):
        f.unlink()
    _train("stage3", tiny_model_dir, manifest, out, launch=DDP, extra=["learning_rate=1e-2"])
    assert f"resuming from {out / 'checkpoint-2'}" in (out / "run.log").read_text()  # on two processes again
    resumed = _weights(out)
    assert _same_weights(straight, resumed, atol=0.0)


@pytest.mark.slow  # DeepSpeed builds its CPU communication op once (minutes), then ~40 s
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_equals_one_process(tiny_model_dir, manifest, tmp_path, zero):
    pytest.importorskip("deepspeed", reason="pip install deepspeed (its CPU accelerator runs on gloo)")
    from transformers import LlavaForConditionalGeneration

    one, ds = tmp_path / "one", tmp_path / f"zero{zero}"
    _train("stage2", tiny_model_dir, manifest, one, launch=None)
    _train("stage2", tiny_model_dir, manifest, ds,
           launch=["--config_file", str(REPO / f"configs/accelerate/deepspeed_zero{zero}.yaml"), "--num_processes", "2"])
    assert _losses(ds) == pytest.approx(_losses(one), rel=1e-4)
    assert _same_weights(_weights(one), _weights(ds), atol=1e-5)  # ZeRO-3 gathers the full weights to save
    LlavaForConditionalGeneration.from_pretrained(ds)


# ---- FSDP2 (torch.distributed.fsdp.fully_shard) on CPU ---------------------------------------------


def _stage2_batches(model_dir: Path, manifest: Path, n_steps: int, global_batch: int):
    from llavarad.model.build import load_model
    from llavarad.train.collator import LlavaCollator
    from llavarad.train.dataset import build_dataset

    bundle = load_model(model_dir, device="cpu", dtype="float32")
    ds = build_dataset(manifest, tokenizer=bundle.tokenizer, image_processor=bundle.image_processor,
                       prompt_format="plain", num_image_tokens=bundle.num_image_tokens,
                       image_token_id=bundle.image_token_id, max_length=256, split="train")
    collate = LlavaCollator(int(bundle.tokenizer.pad_token_id), bundle.image_token_id, bundle.num_image_tokens)
    items = [ds[i % len(ds)] for i in range(n_steps * global_batch)]
    return bundle, [items[s * global_batch:(s + 1) * global_batch] for s in range(n_steps)], collate


def _fsdp_worker(rank: int, world: int, init_file: str, model_dir: str, manifest: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from llavarad.model.build import save_model
    from llavarad.train.stage2_align import freeze_for_stage2

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bundle, steps, collate = _stage2_batches(Path(model_dir), Path(manifest), 3, 4)
    model = bundle.model
    freeze_for_stage2(model)
    model.config.use_cache = False
    for module in model.modules():  # one FSDP unit per transformer block, as the shipped fsdp.yaml wraps
        if type(module).__name__ in ("LlamaDecoderLayer", "Dinov2Layer"):
            fully_shard(module)
    fully_shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for items in steps:
        per_rank = items[rank::world]
        loss = model(**collate(per_rank)).loss
        loss.backward()  # FSDP averages the gradients over ranks: the mean of the two halves' losses
        opt.step()
        opt.zero_grad()
        full = loss.detach().clone()
        dist.all_reduce(full)
        losses.append(float(full) / world)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        bundle.model = _plain_copy(bundle, state)
        save_model(bundle, Path(out))
        Path(out, "losses.json").write_text(json.dumps(losses))
    dist.barrier()
    dist.destroy_process_group()


def _plain_copy(bundle, state: dict):
    """A fresh, unsharded model of the same config holding the gathered full weights."""
    from transformers import LlavaForConditionalGeneration

    plain = LlavaForConditionalGeneration(bundle.model.config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    plain.tie_weights()
    return plain


def _reference_losses(model_dir: Path, manifest: Path) -> tuple[list[float], dict]:
    from llavarad.train.stage2_align import freeze_for_stage2

    torch.manual_seed(0)
    bundle, steps, collate = _stage2_batches(model_dir, manifest, 3, 4)
    model = bundle.model
    freeze_for_stage2(model)
    model.config.use_cache = False
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for items in steps:
        halves = [model(**collate(items[r::2])).loss for r in range(2)]
        loss = sum(halves) / 2  # what two ranks' averaged gradients amount to
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_one_process_and_gathers_a_loadable_model(tiny_model_dir, manifest,
                                                                                     tmp_path):
    import torch.multiprocessing as mp
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "fsdp"
    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "rdzv"), str(tiny_model_dir), str(manifest), str(out)), nprocs=2,
             join=True)
    ref_losses, ref_state = _reference_losses(tiny_model_dir, manifest)
    assert json.loads((out / "losses.json").read_text()) == pytest.approx(ref_losses, rel=1e-5)
    loaded = LlavaForConditionalGeneration.from_pretrained(out)
    got = loaded.state_dict()
    for key, value in ref_state.items():
        assert torch.allclose(got[key], value, atol=1e-5), key
