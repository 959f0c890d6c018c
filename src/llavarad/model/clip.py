"""The stage-1 dual encoder (BiomedCLIP-CXR style): a Dinov2 image tower and a BERT text tower.

Both towers are stock transformers models: ``Dinov2Model`` (image embedding = CLS token after the
final layer norm, then a linear projection) and a BERT-family ``AutoModel`` (CLS token of the last
hidden state, then a two-layer GELU MLP projection, as BiomedCLIP's text head). Both project to a
shared space (512 by default) where they are L2-normalised; a learnable temperature
(``logit_scale``, initialised to ``log(1/0.07)`` and clamped so that ``exp(logit_scale) <= 100``)
scales the cosine similarities.

A CLIP folder is self-describing::

    image_encoder/       Dinov2 HF folder (also the input of stage 2: ``llavarad init``)
    text_encoder/        BERT HF folder + its tokenizer
    heads.safetensors    image_proj, text_proj, logit_scale
    clip_config.json     CxrClipConfig, library versions, training config

:func:`contrastive_loss` is the symmetric InfoNCE loss with negatives from the whole global batch
(features gathered across processes *with* gradients); it lives in :mod:`llavarad.model.contrastive`
and is re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from llavarad.errors import LlavaradError
from llavarad.model.contrastive import contrastive_loss, gather_with_grad
from llavarad.model.presets import ImagePool

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_CONFIG_FILE",
    "HEADS_FILE",
    "TINY_TEXT_CONFIG",
    "ClipFolderError",
    "CxrClip",
    "CxrClipConfig",
    "build_wordpiece_tokenizer",
    "contrastive_loss",
    "gather_with_grad",
    "init_clip",
    "load_clip",
    "save_clip",
]

CLIP_CONFIG_FILE = "clip_config.json"
HEADS_FILE = "heads.safetensors"
FORMAT_VERSION = 1

#: A tiny BERT for tests and the CPU demo (the real text tower is BiomedBERT-base, 768 wide).
TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


IMAGE_POOLS = get_args(ImagePool)


def image_pool_problem(value: Any, field_name: str = "image_pool") -> str | None:
    """The error message for an unknown image pooling, or None (one rule for every config that sets it)."""
    if value in IMAGE_POOLS:
        return None
    return (f"{field_name}={value!r}: use 'cls' (BiomedCLIP's CLS token), 'mean' (average of the patch tokens) "
            "or 'max' (per-dimension maximum over the patch tokens)")


class ClipFolderError(LlavaradError, ValueError):
    """A CLIP folder that is missing files or is inconsistent."""


@dataclass
class CxrClipConfig:
    """Shape of the dual encoder's heads; the towers' own configs live in their HF folders.

    Attributes:
        image_size: input resolution of the image tower (518 for BiomedCLIP-CXR).
        embed_dim: shared embedding size (512).
        context_length: maximum text tokens (256); longer reports are truncated, and counted.
        text_proj: ``mlp`` (Linear-GELU-Linear, BiomedCLIP) or ``linear``.
        image_pool: the image embedding's source: ``cls`` (the CLS token after the final layer norm,
            BiomedCLIP), ``mean`` (the mean of the final patch tokens, timm's ``avg`` pooling) or
            ``max`` (their per-dimension maximum).
            ``mean`` makes every region count in the embedding; on the CPU demo's 4-layer tower it
            leaves patch tokens that a small language model reads more easily (docs/training.md).
        text_proj_hidden: hidden size of the MLP head; default ``(text_width + embed_dim) // 2``.
        logit_scale_init: initial log inverse temperature, ``log(1/0.07)``.
        logit_scale_max: cap of ``exp(logit_scale)`` (100).
        vision_width / text_width: hidden sizes of the towers (filled in by :func:`init_clip`).
    """

    image_size: int = 518
    embed_dim: int = 512
    context_length: int = 256
    text_proj: Literal["mlp", "linear"] = "mlp"
    text_proj_hidden: int | None = None
    image_pool: ImagePool = "cls"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    vision_width: int = 0
    text_width: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        """The widest of the towers and the embedding: the HF Trainer reads ``model.config.hidden_size``
        to fill DeepSpeed's ``auto`` bucket sizes (ZeRO-3 refuses to start without it)."""
        return max(self.vision_width, self.text_width, self.embed_dim)

    def __post_init__(self) -> None:
        problems = []
        if self.image_size <= 0:
            problems.append(f"image_size={self.image_size}: must be positive, e.g. 518")
        if self.embed_dim <= 0:
            problems.append(f"embed_dim={self.embed_dim}: must be positive, e.g. 512")
        if self.context_length < 8:
            problems.append(f"context_length={self.context_length}: use at least 8 tokens (BiomedCLIP: 256)")
        if self.text_proj not in ("mlp", "linear"):
            problems.append(f"text_proj={self.text_proj!r}: use 'mlp' or 'linear'")
        if problem := image_pool_problem(self.image_pool):
            problems.append(problem)
        if self.logit_scale_max <= 1.0:
            problems.append(f"logit_scale_max={self.logit_scale_max}: must exceed 1 (CLIP uses 100)")
        if problems:
            raise ValueError("; ".join(problems))


class CxrClip(nn.Module):
    """Dinov2 image tower + BERT text tower + projection heads + learnable temperature."""

    def __init__(self, config: CxrClipConfig, vision, text, tokenizer=None, image_processor=None):
        super().__init__()
        self.config = config
        self.vision = vision
        self.text = text
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        vw, tw, e = config.vision_width, config.text_width, config.embed_dim
        self.image_proj = nn.Linear(vw, e, bias=False)
        if config.text_proj == "mlp":
            hidden = config.text_proj_hidden or (tw + e) // 2
            self.text_proj = nn.Sequential(nn.Linear(tw, hidden, bias=False), nn.GELU(),
                                           nn.Linear(hidden, e, bias=False))
        else:
            self.text_proj = nn.Sequential(nn.Linear(tw, e, bias=False))
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        # CLIP initialises its projections with std width**-0.5 (larger than nn.Linear's default).
        for head in (self.image_proj, self.text_proj):
            _fan_in_normal_(head)
        # Dinov2's mask token is only used for masked-image modelling; it never receives a
        # gradient here, and an unused trainable parameter breaks DDP's gradient reduction.
        for name, p in self.vision.named_parameters():
            if name.endswith("mask_token"):
                p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.image_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_proj.weight.dtype

    def image_features(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, 3, S, S)`` pixels -> ``(B, embed_dim)`` embeddings (L2-normalised by default)."""
        out = self.vision(pixel_values=pixel_values.to(self.dtype))
        if self.config.image_pool in ("mean", "max"):  # patch tokens after the final layer norm (CLS, registers dropped)
            skip = 1 + int(getattr(self.vision.config, "num_register_tokens", 0) or 0)
            patches = out.last_hidden_state[:, skip:]
            pooled = patches.mean(dim=1) if self.config.image_pool == "mean" else patches.amax(dim=1)
        else:
            pooled = out.pooler_output  # CLS after the final layer norm
        feats = self.image_proj(pooled)
        return nn.functional.normalize(feats, dim=-1) if normalize else feats

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      normalize: bool = True) -> torch.Tensor:
        """``(B, T)`` token ids + mask -> ``(B, embed_dim)`` embeddings (CLS pooling)."""
        out = self.text(input_ids=input_ids, attention_mask=attention_mask)
        feats = self.text_proj(out.last_hidden_state[:, 0])
        return nn.functional.normalize(feats, dim=-1) if normalize else feats

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize reports to ``input_ids``/``attention_mask`` of shape ``(B, T <= context_length)``."""
        if self.tokenizer is None:
            raise ClipFolderError("this CxrClip has no tokenizer; load it with load_clip() or pass one to init_clip()")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected a report string")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.context_length,
                             return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Inference: ``(B, 3, S, S)`` -> ``(B, embed_dim)`` float32, L2-normalised."""
        return self.image_features(pixel_values.to(self.device)).float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Inference: list of ``B`` reports -> ``(B, embed_dim)`` float32, L2-normalised."""
        enc = self.tokenize(texts)
        return self.text_features(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)).float()

    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped at ``logit_scale_max`` (a scalar tensor)."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Training forward: ``(image_emb (B, E), text_emb (B, E), scale ())``."""
        return (self.image_features(pixel_values), self.text_features(input_ids, attention_mask), self.scale())

    def gradient_checkpointing_enable(self) -> None:
        """Recompute tower activations in backward (trades ~30% time for a lot of memory)."""
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
        self.vision.gradient_checkpointing_enable(**kwargs)
        self.text.gradient_checkpointing_enable(**kwargs)


def _fan_in_normal_(module: nn.Module) -> None:
    """Normal(0, fan_in**-0.5) weights and zero biases for every Linear layer in ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=layer.weight.shape[1] ** -0.5)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def build_wordpiece_tokenizer(corpus: Iterable[str], vocab_size: int = 2000, context_length: int = 256):
    """A lower-casing BERT WordPiece tokenizer for ``corpus`` (no download); a fast tokenizer.

    The vocabulary is built deterministically (the ``tokenizers`` WordPiece trainer is not: its
    vocabulary changes from run to run): every character seen, alone and as a ``##`` continuation,
    then the most frequent whole words (ties alphabetical) up to ``vocab_size``. Rarer words split
    into known pieces, so nothing but unseen characters is ever ``[UNK]``.

    Special tokens follow BERT: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4; a
    single text encodes as ``[CLS] ... [SEP]`` so CLS pooling works as with BiomedBERT.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in corpus:
        if text:
            counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    pieces = specials + chars + [f"##{c}" for c in chars]
    room = max(0, vocab_size - len(pieces))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:room]
    vocab = {piece: i for i, piece in enumerate(pieces + words)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=context_length,
                                   padding_side="right")


def _load_text_tower(folder: Path | None, config_kwargs: dict[str, Any] | None, vocab_size: int | None, dtype=None):
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if folder is None:
        kwargs = dict(TINY_TEXT_CONFIG)
        kwargs.update(config_kwargs or {})
        if vocab_size is not None:
            kwargs["vocab_size"] = vocab_size
        return BertModel(BertConfig(**kwargs), add_pooling_layer=False)
    cfg = AutoConfig.from_pretrained(folder)
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if cfg.model_type in ("bert", "roberta", "xlm-roberta", "electra"):
        kwargs["add_pooling_layer"] = False  # CLS pooling from the last hidden state; an unused pooler breaks DDP
    try:
        return AutoModel.from_pretrained(folder, **kwargs)
    except TypeError:
        kwargs.pop("add_pooling_layer", None)
        return AutoModel.from_pretrained(folder, **kwargs)


def init_clip(
    *,
    image_size: int,
    vision_init: str | Path | None = None,
    vision_config: dict[str, Any] | None = None,
    text_init: str | Path | None = None,
    text_config: dict[str, Any] | None = None,
    tokenizer=None,
    corpus: Iterable[str] | None = None,
    tokenizer_vocab_size: int = 2000,
    embed_dim: int = 512,
    context_length: int = 256,
    text_proj: Literal["mlp", "linear"] = "mlp",
    image_pool: ImagePool = "cls",
    logit_scale_init: float = math.log(1 / 0.07),
    logit_scale_max: float = 100.0,
    seed: int = 0,
):
    """A dual encoder ready for stage 1.

    Image tower: a Dinov2 folder (``vision_init``: e.g. facebook/dinov2-base, or the image_encoder
    of a converted BiomedCLIP-CXR) or, when absent, a random ``Dinov2Model`` built from
    ``vision_config`` (a preset's ``vision`` dict). Text tower: a BERT folder with its tokenizer
    (``text_init``: BiomedBERT for real runs) or a random tiny BERT (``text_config`` overrides
    :data:`TINY_TEXT_CONFIG`) with a WordPiece tokenizer trained on ``corpus``.
    Projection heads are random (seeded). ``image_pool`` picks the image embedding's source
    (:class:`CxrClipConfig`).
    """
    from transformers import AutoConfig, AutoTokenizer, Dinov2Config, Dinov2Model

    from llavarad.model.processor import build_image_processor

    torch.manual_seed(seed)
    if vision_init is not None:
        vision_init = Path(vision_init)
        if not (vision_init / "config.json").is_file():
            raise ClipFolderError(f"vision_init {vision_init} has no config.json: pass a Dinov2 Hugging Face folder")
        vcfg = AutoConfig.from_pretrained(vision_init)
        if vcfg.model_type != "dinov2":
            raise ClipFolderError(f"vision_init {vision_init}: model_type {vcfg.model_type!r}, expected 'dinov2'")
        vision = Dinov2Model.from_pretrained(vision_init)
    else:
        if not vision_config:
            raise ClipFolderError("pass vision_init (a Dinov2 folder) or vision_config (a preset's vision dict)")
        vkw = dict(vision_config)
        vkw["image_size"] = image_size
        vision = Dinov2Model(Dinov2Config(**vkw))
        # Random towers exist for tests and the CPU demo. With the std-0.02 init of BERT/DINOv2, a
        # tiny tower maps every input to nearly the same CLS embedding and contrastive training
        # sits at loss ln(B) for a hundred steps or more; fan-in scaled weights start it at once.
        _fan_in_normal_(vision)
    if text_init is not None:
        text_init = Path(text_init)
        if not (text_init / "config.json").is_file():
            raise ClipFolderError(f"text_init {text_init} has no config.json: pass a BERT Hugging Face folder "
                                  "(e.g. BiomedBERT) with its tokenizer")
        text = _load_text_tower(text_init, None, None)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(text_init)
    else:
        if tokenizer is None:
            if corpus is None:
                raise ClipFolderError("a random text tower needs a tokenizer or a corpus to train one on")
            tokenizer = build_wordpiece_tokenizer(corpus, tokenizer_vocab_size, context_length)
        text_cfg = dict(text_config or {})
        text_cfg.setdefault("max_position_embeddings", max(context_length, TINY_TEXT_CONFIG["max_position_embeddings"]))
        text_cfg.setdefault("pad_token_id", tokenizer.pad_token_id)
        text = _load_text_tower(None, text_cfg, len(tokenizer))
        _fan_in_normal_(text)  # see the image tower above
    max_pos = getattr(text.config, "max_position_embeddings", context_length)
    if context_length > max_pos:
        raise ClipFolderError(f"context_length={context_length} exceeds the text tower's "
                              f"max_position_embeddings={max_pos}: use context_length <= {max_pos}")
    cfg = CxrClipConfig(image_size=image_size, embed_dim=embed_dim, context_length=context_length, text_proj=text_proj,
                        image_pool=image_pool, logit_scale_init=logit_scale_init, logit_scale_max=logit_scale_max,
                        vision_width=int(vision.config.hidden_size), text_width=int(text.config.hidden_size),
                        extra={"init": {"vision": str(vision_init) if vision_init else "random",
                                        "text": str(text_init) if text_init else "random", "seed": seed}})
    return CxrClip(cfg, vision, text, tokenizer, build_image_processor(image_size))


def _versions() -> dict[str, str]:
    from llavarad.model.build import versions

    return versions()


def save_clip(clip, out_dir: str | Path, *, train_config: dict[str, Any] | None = None,
              state_dict: dict[str, Any] | None = None) -> Path:
    """Write a self-describing CLIP folder (see the module docstring); returns ``out_dir``.

    ``state_dict``: the weights to write instead of ``clip``'s own, with ``clip.state_dict()``'s
    keys. A sharded run (ZeRO-3, FSDP) passes the full state gathered by the engine here, since
    its processes hold only shards of ``clip``'s parameters. Floating-point weights are written
    in float32.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own = clip.state_dict()
    state = own if state_dict is None else state_dict
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ClipFolderError(f"save_clip: the state dict does not match the model (missing {missing[:5]}, "
                              f"unexpected {extra[:5]}); pass the engine's full state dict of this CxrClip")

    def part(prefix: str) -> dict[str, Any]:
        return {k[len(prefix):]: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
                for k, v in state.items() if k.startswith(prefix)}

    img_dir, txt_dir = out / "image_encoder", out / "text_encoder"
    clip.vision.save_pretrained(img_dir, state_dict=part("vision."), safe_serialization=True)
    if clip.image_processor is not None:
        clip.image_processor.save_pretrained(img_dir)
    clip.text.save_pretrained(txt_dir, state_dict=part("text."), safe_serialization=True)
    if clip.tokenizer is not None:
        clip.tokenizer.save_pretrained(txt_dir)
    heads = {f"image_proj.{k}": v for k, v in part("image_proj.").items()}
    heads.update({f"text_proj.{k}": v for k, v in part("text_proj.").items()})
    heads["logit_scale"] = part("logit_scale")[""].reshape(1)
    save_file(heads, str(out / HEADS_FILE))  # part() already gave float32, contiguous, on CPU
    meta = {"format_version": FORMAT_VERSION, "config": asdict(clip.config), "versions": _versions(),
            "train_config": train_config}
    tmp = out / (CLIP_CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / CLIP_CONFIG_FILE)
    return out


def load_clip(clip_dir: str | Path, *, device: str = "auto", dtype: str = "auto"):
    """Load a CLIP folder written by :func:`save_clip` (or by ``llavarad convert``) in eval mode.

    ``device``/``dtype`` as in :func:`llavarad.model.build.resolve_device_dtype`.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Dinov2Model

    from llavarad.model.build import resolve_device_dtype
    from llavarad.model.processor import build_image_processor

    folder = Path(clip_dir)
    if not folder.is_dir():
        raise ClipFolderError(f"CLIP folder {folder} does not exist: train one with `llavarad train stage1`")
    missing = [n for n in (CLIP_CONFIG_FILE, HEADS_FILE, "image_encoder/config.json", "text_encoder/config.json")
               if not (folder / n).is_file()]
    if missing:
        hint = " (this looks like a bare Dinov2 folder; retrieval needs the whole CLIP folder)" \
            if (folder / "config.json").is_file() else ""
        raise ClipFolderError(f"{folder} is not a CLIP folder: missing {', '.join(missing)}{hint}")
    try:
        meta = json.loads((folder / CLIP_CONFIG_FILE).read_text(encoding="utf-8"))
        cfg_dict = dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ClipFolderError(f"{folder / CLIP_CONFIG_FILE}: unreadable ({exc}); re-save the folder") from exc
    cfg = CxrClipConfig(**cfg_dict)
    torch_device, torch_dtype = resolve_device_dtype(device, dtype)
    vision = Dinov2Model.from_pretrained(folder / "image_encoder")
    text = _load_text_tower(folder / "text_encoder", None, None)
    tokenizer = AutoTokenizer.from_pretrained(folder / "text_encoder")
    clip = CxrClip(cfg, vision, text, tokenizer, build_image_processor(cfg.image_size))
    heads = load_file(str(folder / HEADS_FILE))
    if "logit_scale" not in heads:
        raise ClipFolderError(f"{folder / HEADS_FILE} has no logit_scale; re-save the folder")
    with torch.no_grad():
        clip.logit_scale.copy_(heads.pop("logit_scale").reshape(()))
    img_sd = {k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith("image_proj.")}
    txt_sd = {k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith("text_proj.")}
    try:
        clip.image_proj.load_state_dict(img_sd)
        clip.text_proj.load_state_dict(txt_sd)
    except RuntimeError as exc:
        raise ClipFolderError(f"{folder / HEADS_FILE} does not match {CLIP_CONFIG_FILE}: {exc}") from exc
    clip.meta = meta
    clip.to(device=torch_device, dtype=torch_dtype)
    clip.eval()
    return clip
