"""A tiny LLaMA language model trained from scratch on report text (the demo's stand-in for Vicuna).

LLaVA-Rad starts stages 2-3 from a pretrained, chat-tuned language model. The CPU demo cannot
download one, so it builds a byte-level BPE tokenizer on the training reports and trains a small
``LlamaForCausalLM`` on two kinds of text: bare findings, and text-only "v1" conversations (system
prompt, question with indication, answer = findings + ``</s>``) with the loss on the answer, which
is what Vicuna's chat tuning gives the real model. The output is an ordinary Hugging Face folder
(config, safetensors, tokenizer) that :func:`llavarad.model.build.init_from_parts` accepts.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from llavarad.model.processor import IGNORE_INDEX
from llavarad.prompts.model import IMAGE_PLACEHOLDER, build_prompt

logger = logging.getLogger(__name__)

__all__ = ["LmPretrainConfig", "pretrain_lm", "lm_training_texts"]


@dataclass
class LmPretrainConfig:
    """Settings of the tiny language model and its training (architecture from a preset's ``text``)."""

    preset: str = "demo"
    vocab_size: int = 1024
    steps: int = 150
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    max_length: int = 160
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [f"{k} must be > 0, got {getattr(self, k)}" for k in
                    ("vocab_size", "steps", "batch_size", "learning_rate", "max_length") if getattr(self, k) <= 0]
        if self.vocab_size < 259:
            problems.append(f"vocab_size {self.vocab_size} must be at least 259 (256 bytes + 3 special tokens)")
        if problems:
            raise ValueError("; ".join(problems))


def lm_training_texts(indications: list[str | None], findings: list[str]) -> list[tuple[str, str]]:
    """(context, target) pairs: bare findings (empty context) and text-only v1 conversations."""
    pairs: list[tuple[str, str]] = []
    for indication, text in zip(indications, findings):
        pairs.append(("", text))
        parts = build_prompt("v1", indication=indication, findings=text)
        # The image placeholder is dropped: this model has never seen an image.
        pairs.append((parts.prompt.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, ""),
                      parts.target))
    return pairs


def _encode(tokenizer, context: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    """Ids and labels (loss on the target + ``</s>`` only); an over-long context loses its start."""
    body = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    tgt = (tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_length - 1]
    room = max_length - 1 - len(tgt)
    body = body[len(body) - room:] if room > 0 else []
    ids = [tokenizer.bos_token_id] + body + tgt
    # Loss on the target only: all of a bare finding text, the answer of a conversation (chat tuning).
    return ids, [IGNORE_INDEX] * (1 + len(body)) + tgt


def pretrain_lm(texts: list[tuple[str, str]], out_dir: str | Path, cfg: LmPretrainConfig) -> dict:
    """Build the tokenizer, train the LM on ``texts`` ((context, target) pairs), save to ``out_dir``.

    Returns a summary (losses, steps, seconds, parameter count), also written to
    ``out_dir/lm_summary.json``. Contexts that do not fit ``max_length`` lose their start: this is
    language-model pretraining on free text, not the supervised stages; the target is always kept.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llavarad.model.presets import load_preset
    from llavarad.model.tokenizer import build_tokenizer

    if not texts:
        raise ValueError("pretrain_lm: no training text given")
    out = Path(out_dir)
    t0 = time.time()
    corpus = [c for c, _ in texts[:2]] + [t for _, t in texts]
    tokenizer = build_tokenizer(corpus, vocab_size=cfg.vocab_size)
    preset = load_preset(cfg.preset)
    lm_config = LlamaConfig(**{**preset.text, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                               "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id})
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(lm_config)
    encoded = [_encode(tokenizer, c, t, cfg.max_length) for c, t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(encoded), (cfg.batch_size,), generator=gen).tolist()
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            a, b = encoded[i]
            ids[row, :len(a)] = torch.tensor(a)
            labels[row, :len(b)] = torch.tensor(b)
            mask[row, :len(a)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg.steps - 1:
            logger.info("lm pretrain step %d/%d loss %.3f", step + 1, cfg.steps, losses[-1])
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tail = losses[-20:]
    summary = {"steps": cfg.steps, "first_loss": losses[0], "final_loss": sum(tail) / len(tail),
               "examples": len(texts), "vocab_size": len(tokenizer),
               "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t0, 2),
               "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    (out / "lm_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
