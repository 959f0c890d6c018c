"""GPU training and generation throughput of the full llava-rad-7b shape (random weights).

Builds a randomly initialised model of the released architecture (Dinov2 ViT-B/14 at 518 px,
1369 image tokens, LLaMA-2 7B) directly on the GPU in bf16, attaches stage-3 LoRA (r=64 on
q/k/v/o/gate/up/down, projector trained), enables gradient checkpointing, and times optimizer
steps on batches shaped like MIMIC-CXR findings: samples/s, tokens/s, model FLOPs utilisation
and peak memory. Then times greedy fp16 generation of fixed-length reports with the KV cache at
batch 1, 8 and 32 (tokens/s and images/s). No downloads needed.

    python benchmarks/gpu_train.py                   # on a CUDA machine (about 3-5 minutes)
    python benchmarks/gpu_train.py --tiny            # dry run of the same logic on CPU, tiny preset

Without a GPU (and without --tiny) it prints why and exits 0.
MFU counts model FLOPs only (no recomputation): frozen weights need the forward (2 N T) and the
input gradients (2 N T), trainable LoRA/projector weights add their weight gradients, attention
adds 4 s^2 d per layer and sequence forward (x3 with backward); the frozen vision tower runs
forward only. Peak: 989 TFLOP/s bf16 dense for H100/H200, 312 for A100 (override --peak-tflops).
"""

from __future__ import annotations

import argparse
import sys
import time

# Synthetic findings of realistic length (about 90 words); not taken from any real report.
_FINDINGS = ("Frontal and lateral views of the chest were obtained. The cardiomediastinal silhouette is within "
             "normal limits. There is a small left pleural effusion with adjacent basilar atelectasis. No focal "
             "consolidation is seen in either lung. There is no pneumothorax. Mild interstitial prominence may "
             "reflect early edema. A right internal jugular catheter terminates in the lower superior vena cava. "
             "The osseous structures are unremarkable for age. Degenerative changes are noted in the thoracic spine. "
             "Compared with the prior study, the effusion is slightly larger.")


def _peak_flops(device_name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    name = device_name.upper()
    if "H100" in name or "H200" in name or "GH200" in name:
        return 989e12
    if "A100" in name:
        return 312e12
    return None


def _build(preset_name: str, device, dtype):
    import torch
    from transformers import LlavaForConditionalGeneration

    from llavarad.model.build import build_llava_config
    from llavarad.model.presets import load_preset
    from llavarad.model.tokenizer import add_image_token, build_tokenizer

    preset = load_preset(preset_name)
    tok = build_tokenizer([_FINDINGS])
    image_token_id = add_image_token(tok)
    vocab = max(len(tok), int(preset.text.get("vocab_size", 0)) + 1)
    config = build_llava_config(preset, vocab_size=vocab, image_token_id=image_token_id,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id)
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # allocate and initialise on the GPU directly: no 28 GB host copy
            torch.manual_seed(0)
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model, tok, preset, image_token_id


def _flops_per_step(model, batch: int, seq: int, n_img: int, preset) -> float:
    lm = model.base_model.model.model.language_model if hasattr(model, "base_model") else model.model.language_model
    vision = [p for n, p in model.named_parameters() if "vision_tower" in n]
    n_vision = sum(p.numel() for p in vision)
    n_lm_frozen = sum(p.numel() for n, p in model.named_parameters()
                      if "vision_tower" not in n and not p.requires_grad)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    d = int(preset.text["hidden_size"])
    layers = int(preset.text["num_hidden_layers"])
    tokens = batch * seq
    embed = lm.embed_tokens.weight.numel()  # a lookup, not a matmul
    flops = 4 * (n_lm_frozen - embed) * tokens + 6 * n_trainable * tokens
    flops += 3 * 4 * layers * seq * seq * d * batch
    flops += 2 * n_vision * batch * (n_img + 1)
    return float(flops)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="dry run on CPU with the tiny preset")
    ap.add_argument("--batch", type=int, default=8, help="per-GPU batch (paper: 64 global / 8 GPUs = 8)")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps (after 2 warm-up steps)")
    ap.add_argument("--gen-batches", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 32],
                    help="comma-separated generation batch sizes (default 1,8,32)")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args(argv)

    import torch

    from llavarad.model.processor import encode_example
    from llavarad.train.collator import LlavaCollator
    from llavarad.train.lora import LoraSettings, apply_lora

    if args.tiny:
        device, dtype, preset_name = torch.device("cpu"), torch.float32, "tiny"
        args.batch, args.steps, args.gen_batches, args.gen_tokens = 2, 2, [1, 2], 8
    elif not torch.cuda.is_available():
        print("gpu_train: no CUDA device here; skipped (run on a GPU machine, or --tiny for a CPU dry run)")
        return 0
    else:
        device, dtype, preset_name = torch.device("cuda"), torch.bfloat16, "llava-rad-7b"
    t_start = time.time()
    model, tok, preset, image_token_id = _build(preset_name, device, dtype)
    print(f"built {preset_name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters on {device} "
          f"in {time.time() - t_start:.1f} s")
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraSettings() if not args.tiny else LoraSettings(r=4, alpha=8)
    model = apply_lora(model, lora)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    n_img = preset.num_image_tokens
    ex = encode_example(tok, "v1", indication="Shortness of breath.", findings=_FINDINGS, num_image_tokens=n_img,
                        image_token_id=image_token_id, max_length=4096)
    item = {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels),
            "pixel_values": torch.randn(3, preset.image_size, preset.image_size)}
    batch = LlavaCollator(int(tok.pad_token_id), image_token_id, n_img)([item] * args.batch)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    seq = batch["input_ids"].shape[1]
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    print(f"stage-3 step: batch {args.batch} x {seq} tokens ({n_img} image), "
          f"{sum(p.numel() for p in trainable) / 1e6:.1f} M trainable parameters")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(2 + args.steps):
        if i == 2:
            sync()
            t0 = time.time()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    dt = (time.time() - t0) / args.steps
    samples_s = args.batch / dt
    tokens_s = args.batch * seq / dt
    flops = _flops_per_step(model, args.batch, seq, n_img, preset)
    peak = _peak_flops(torch.cuda.get_device_name() if device.type == "cuda" else "cpu", args.peak_tflops)
    mfu = flops / dt / peak if peak else None
    mem_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    print(f"train: {dt:.3f} s/step, {samples_s:.2f} samples/s, {tokens_s:.0f} tokens/s, "
          f"{flops / dt / 1e12:.1f} TFLOP/s model, MFU {mfu if mfu is None else f'{mfu:.3f}'}, "
          f"peak memory {mem_gb if mem_gb is None else f'{mem_gb:.1f} GiB'}, loss {loss.item():.3f}")

    # Generation: greedy, fixed number of new tokens, KV cache, merged weights, in the inference dtype.
    del opt
    gen_model = model.merge_and_unload()
    gen_model.eval()
    gen_model.config.use_cache = True
    gen_dtype = torch.float32 if args.tiny else torch.float16  # the release runs fp16
    gen_model.to(gen_dtype)
    prompt = encode_example(tok, "v1", indication="Shortness of breath.", findings=None, num_image_tokens=n_img,
                            image_token_id=image_token_id)
    gen_results = []
    for gen_batch in args.gen_batches:
        ids = torch.tensor([prompt.input_ids] * gen_batch, device=device)
        pixels = torch.randn(gen_batch, 3, preset.image_size, preset.image_size, device=device, dtype=gen_dtype)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, do_sample=False,
                      use_cache=True)
        with torch.inference_mode():
            gen_model.generate(**kwargs, max_new_tokens=4, min_new_tokens=4)  # warm-up
            sync()
            t0 = time.time()
            out = gen_model.generate(**kwargs, max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens)
            sync()
        gdt = time.time() - t0
        new_tokens = (out.shape[1] - ids.shape[1]) * gen_batch
        gen_results.append((gen_batch, new_tokens / gdt, gen_batch / gdt))
        print(f"generate ({str(gen_dtype).replace('torch.', '')}, KV cache): batch {gen_batch}, {args.gen_tokens} new "
              f"tokens each in {gdt:.2f} s: {new_tokens / gdt:.0f} tokens/s, {gen_batch / gdt:.2f} images/s")
    print(f"total {time.time() - t_start:.1f} s")
    tag = "_dryrun" if args.tiny else ""
    print(f"RESULT gpu_train_samples_per_s{tag} {samples_s:.3f} samples/s goal=>=1.1 (paper: 8xA100, 3 epochs in 16 h)")
    print(f"RESULT gpu_train_tokens_per_s{tag} {tokens_s:.0f} tokens/s goal=report")
    if mfu is not None:
        print(f"RESULT gpu_train_mfu{tag} {mfu:.3f} fraction goal=>=0.30")
    if mem_gb is not None:
        print(f"RESULT gpu_train_peak_memory{tag} {mem_gb:.1f} GiB goal=<=78")
    for gen_batch, tok_s, img_s in gen_results:
        print(f"RESULT gpu_generate_b{gen_batch}_tokens_per_s{tag} {tok_s:.0f} tokens/s goal=report")
        print(f"RESULT gpu_generate_b{gen_batch}_images_per_s{tag} {img_s:.3f} images/s goal=report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
