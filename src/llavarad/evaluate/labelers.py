"""Report labelers behind one interface: the offline rule-based labeler and CheXbert.

Every labeler turns report texts into, per report, ``{observation: 1.0 | 0.0 | -1.0 | None}``
for the 14 CheXpert observations (1 positive, 0 negative, -1 uncertain, None not mentioned), and
carries ``name``, ``version`` and ``settings`` for the evaluation record. The F1 code never needs
to know which one ran.

- ``"rules"``: :class:`~llavarad.evaluate.rule_labeler.RuleLabeler`, no weights, the default.
- ``"chexbert"``: CheXbert (BERT-base + 14 linear heads). Weights from, in order: the
  ``weights`` argument, the ``LLAVARAD_CHEXBERT_WEIGHTS`` environment variable (a local
  ``chexbert.pth``), else the ``f1chexbert`` package (which fetches them itself). The BERT
  tokenizer comes from a folder holding ``vocab.txt`` (``tokenizer`` argument or
  ``LLAVARAD_CHEXBERT_TOKENIZER``), else ``bert-base-uncased`` from the local Hugging Face cache.

Example:
    >>> lab = get_labeler("rules")
    >>> lab.label(["Small left pleural effusion."])[0]["Pleural Effusion"]
    1.0
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Protocol

from llavarad.errors import LlavaradError
from llavarad.evaluate.rule_labeler import RuleLabeler, RuleLabelerConfig
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

logger = logging.getLogger(__name__)

__all__ = [
    "LABELER_NAMES",
    "CHEXBERT_CONDITIONS",
    "CHEXBERT_WEIGHTS_ENV",
    "CHEXBERT_TOKENIZER_ENV",
    "Labeler",
    "LabelerUnavailable",
    "ChexbertLabeler",
    "get_labeler",
]

LABELER_NAMES: tuple[str, ...] = ("rules", "chexbert")
CHEXBERT_WEIGHTS_ENV = "LLAVARAD_CHEXBERT_WEIGHTS"
CHEXBERT_TOKENIZER_ENV = "LLAVARAD_CHEXBERT_TOKENIZER"

#: CheXbert's head order (differs from the CheXpert CSV order: Lung Opacity before Lung Lesion).
CHEXBERT_CONDITIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices", "No Finding",
)
# Head classes: 0 blank, 1 positive, 2 negative, 3 uncertain (No Finding: 0 blank, 1 positive).
_CLASS_VALUE: tuple[float | None, ...] = (None, 1.0, 0.0, -1.0)
_MAX_TOKENS = 512
_WS = re.compile(r"\s+")


class Labeler(Protocol):
    """What the evaluation needs from a labeler."""

    name: str
    version: str

    @property
    def settings(self) -> dict[str, Any]: ...

    def label(self, texts: list[str]) -> list[dict[str, float | None]]: ...


class LabelerUnavailable(LlavaradError, RuntimeError):
    """A labeler's package or weights cannot be had here; the message says how to provide them."""


def get_labeler(name: str = "rules", **options: Any) -> Labeler:
    """Build the labeler ``name`` (one of :data:`LABELER_NAMES`).

    Options: ``rules`` takes :class:`RuleLabelerConfig` fields (``alternatives``, ``probable``); ``chexbert``
    takes ``weights``, ``tokenizer``, ``device`` and ``batch_size`` (see :class:`ChexbertLabeler`).
    """
    if name == "rules":
        try:
            return RuleLabeler(RuleLabelerConfig(**options))
        except TypeError as exc:
            raise ValueError(f"labeler 'rules': {exc}; its options are: alternatives, probable") from exc
    if name == "chexbert":
        return ChexbertLabeler(**options)
    raise ValueError(f"unknown labeler {name!r}: use one of {', '.join(LABELER_NAMES)}")


def _clean_for_bert(text: str) -> str:
    return _WS.sub(" ", text.replace("\n", " ")).strip()


class ChexbertLabeler:
    """CheXbert: BERT-base with 13 four-way heads and a two-way No Finding head.

    Args:
        weights: a CheXbert checkpoint (``chexbert.pth``: ``{"model_state_dict": ...}``, keys
            optionally prefixed ``module.``). None: ``$LLAVARAD_CHEXBERT_WEIGHTS``, else the
            ``f1chexbert`` package.
        tokenizer: a folder with the BERT ``vocab.txt`` (and optionally ``config.json``). None:
            ``$LLAVARAD_CHEXBERT_TOKENIZER``, the checkpoint's folder if it has ``vocab.txt``,
            else ``bert-base-uncased`` from the local Hugging Face cache (never downloaded here).
        device: torch device string (``"cpu"``, ``"cuda"``).
        batch_size: reports per forward pass.

    Raises:
        LabelerUnavailable: when neither weights nor the package can be had, naming both fixes.
    """

    name = "chexbert"

    def __init__(
        self,
        weights: str | Path | None = None,
        tokenizer: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 16,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        self.device = device
        self.batch_size = batch_size
        weights = weights or os.environ.get(CHEXBERT_WEIGHTS_ENV) or None
        tokenizer = tokenizer or os.environ.get(CHEXBERT_TOKENIZER_ENV) or None
        if weights is not None:
            self._source = f"local checkpoint {weights}"
            self.model, self.tokenizer = _load_local(Path(weights), tokenizer, device)
        else:
            self._source = "f1chexbert package"
            self.model, self.tokenizer = _load_from_package(device)
        self.version = self._source
        # CheXbert keeps 512 tokens; a smaller position table (tiny test models) caps that
        self.max_tokens = min(_MAX_TOKENS, int(self.model.bert.config.max_position_embeddings))

    @property
    def settings(self) -> dict[str, Any]:
        """What decides this labeler's output (recorded with every evaluation)."""
        return {
            "implementation": "CheXbert (BERT-base, 14 heads), argmax per head",
            "weights": self._source,
            "max_tokens": self.max_tokens,
            "values": "1.0 positive, 0.0 negative, -1.0 uncertain, None blank",
            "device": self.device,
        }

    def _encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        pieces = tok.tokenize(_clean_for_bert(text))
        ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(pieces), tok.sep_token_id]
        if len(ids) > self.max_tokens:  # keep [CLS] ... [SEP], as CheXbert does
            ids = ids[: self.max_tokens - 1] + [tok.sep_token_id]
        return ids

    def label(self, texts: list[str]) -> list[dict[str, float | None]]:
        """Label reports (see the module docstring for the value convention)."""
        import torch

        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"report {i}: expected a string, got {type(text).__name__}")
        out: list[dict[str, float | None]] = []
        self.model.eval()
        with torch.inference_mode():
            for b in range(0, len(texts), self.batch_size):
                encoded = [self._encode(t) for t in texts[b:b + self.batch_size]]
                width = max(len(e) for e in encoded)
                ids = torch.zeros((len(encoded), width), dtype=torch.long)
                mask = torch.zeros((len(encoded), width), dtype=torch.long)
                for row, e in enumerate(encoded):
                    ids[row, : len(e)] = torch.tensor(e)
                    mask[row, : len(e)] = 1
                heads = self.model(ids.to(self.device), mask.to(self.device))  # 14 x (B, classes)
                classes = torch.stack([h.argmax(dim=1) for h in heads], dim=1).cpu().tolist()  # (B, 14)
                for row in classes:
                    by_name = {cond: _CLASS_VALUE[c] for cond, c in zip(CHEXBERT_CONDITIONS, row)}
                    out.append({obs: by_name[obs] for obs in CHEXPERT_OBSERVATIONS})
        return out


def _build_model(config: Any) -> Any:
    """CheXbert's module layout: ``bert`` + ``linear_heads`` (13 x 4 classes, then 2)."""
    import torch
    from transformers import BertModel

    class _Chexbert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config)
            self.dropout = torch.nn.Dropout(0.1)
            hidden = config.hidden_size
            self.linear_heads = torch.nn.ModuleList(
                [torch.nn.Linear(hidden, 4) for _ in range(13)] + [torch.nn.Linear(hidden, 2)]
            )

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
            """ids, mask: (B, T) -> 14 logits tensors, (B, 4) x 13 and (B, 2)."""
            cls = self.dropout(self.bert(ids, attention_mask=mask)[0][:, 0, :])
            return [head(cls) for head in self.linear_heads]

    return _Chexbert()


def _config_from_state(state: dict[str, Any], tokenizer_dir: Path | None) -> Any:
    from transformers import BertConfig

    if tokenizer_dir is not None and (tokenizer_dir / "config.json").is_file():
        return BertConfig.from_pretrained(str(tokenizer_dir))
    emb = state["bert.embeddings.word_embeddings.weight"]
    layers = {int(k.split(".")[3]) for k in state if k.startswith("bert.encoder.layer.")}
    hidden = int(emb.shape[1])
    return BertConfig(
        vocab_size=int(emb.shape[0]),
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=max(1, hidden // 64),  # BERT's 64-wide heads; a config.json overrides
        intermediate_size=int(state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["bert.embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["bert.embeddings.token_type_embeddings.weight"].shape[0]),
    )


def _load_tokenizer(tokenizer: str | Path | None, weights: Path) -> tuple[Any, Path | None]:
    from transformers import BertTokenizer

    candidates = [Path(tokenizer)] if tokenizer is not None else [weights.parent]
    for folder in candidates:
        if (folder / "vocab.txt").is_file():
            return BertTokenizer.from_pretrained(str(folder)), folder
    if tokenizer is not None:
        raise LabelerUnavailable(f"CheXbert tokenizer folder {tokenizer} has no vocab.txt: point "
                                 f"--chexbert-tokenizer / ${CHEXBERT_TOKENIZER_ENV} at a bert-base-uncased folder")
    try:
        return BertTokenizer.from_pretrained("bert-base-uncased", local_files_only=True), None
    except (OSError, ValueError) as exc:
        raise LabelerUnavailable(
            "CheXbert needs the bert-base-uncased tokenizer and it is not in the local Hugging Face cache: "
            f"put vocab.txt next to {weights} or set ${CHEXBERT_TOKENIZER_ENV} to a folder holding it"
        ) from exc


def _load_local(weights: Path, tokenizer: str | Path | None, device: str) -> tuple[Any, Any]:
    import torch

    if not weights.is_file():
        raise LabelerUnavailable(f"CheXbert weights {weights} not found: pass an existing chexbert.pth "
                                 f"(--chexbert-weights or ${CHEXBERT_WEIGHTS_ENV})")
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise LabelerUnavailable(f"CheXbert weights {weights} could not be read as a torch checkpoint ({exc})") from exc
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "bert.embeddings.word_embeddings.weight" not in {
        k.removeprefix("module.") for k in state
    }:
        raise LabelerUnavailable(f"{weights} is not a CheXbert checkpoint (no bert.* weights under model_state_dict)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    tok, tok_dir = _load_tokenizer(tokenizer, weights)
    model = _build_model(_config_from_state(state, tok_dir))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # old checkpoints store position_ids; newer BertModel keeps them as non-persistent buffers
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise LabelerUnavailable(f"{weights} does not fit CheXbert's layout: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
    if len(tok) > model.bert.config.vocab_size:
        raise LabelerUnavailable(f"tokenizer vocabulary ({len(tok)}) is larger than the checkpoint's "
                                 f"({model.bert.config.vocab_size}): use the bert-base-uncased vocab.txt")
    logger.info("loaded CheXbert from %s", weights)
    return model.to(device), tok


def _load_from_package(device: str) -> tuple[Any, Any]:
    try:
        from f1chexbert import F1CheXbert  # type: ignore[import-not-found]
    except ImportError as exc:
        raise LabelerUnavailable(
            "CheXbert is not available: either pass a local chexbert.pth (--chexbert-weights or "
            f"${CHEXBERT_WEIGHTS_ENV}) or install the optional package (pip install 'llavarad[chexbert]'), "
            "which downloads the weights on first use. Offline, use --labeler rules."
        ) from exc
    try:
        scorer = F1CheXbert(device=device)
    except Exception as exc:  # noqa: BLE001 - network, cache and format faults all end here
        raise LabelerUnavailable(
            f"the f1chexbert package could not load its weights ({type(exc).__name__}: {exc}); "
            f"download chexbert.pth once and pass it with --chexbert-weights or ${CHEXBERT_WEIGHTS_ENV}"
        ) from exc
    return scorer.model, scorer.tokenizer
