"""The CheXbert wrapper: real checkpoint loading on a tiny checkpoint, and clear errors without one."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from llavarad.evaluate.labelers import (
    CHEXBERT_CONDITIONS,
    CHEXBERT_WEIGHTS_ENV,
    LabelerUnavailable,
    get_labeler,
)
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "small", "pleural", "effusion", "heart", "is",
          "enlarged", ".", "##s", "left"]


def _make_checkpoint(folder: Path, *, wanted: list[int], prefix: str = "module.") -> Path:
    """A CheXbert-shaped checkpoint (hidden 32, 1 layer) whose heads always answer ``wanted``."""
    from transformers import BertConfig

    from llavarad.evaluate.labelers import _build_model

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    model = _build_model(config)
    with torch.no_grad():
        for head, cls in zip(model.linear_heads, wanted):
            head.weight.zero_()
            head.bias.zero_()
            head.bias[cls] = 5.0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(_VOCAB) + "\n")
    config.save_pretrained(folder)  # config.json: gives the head count the weights cannot
    path = folder / "chexbert.pth"
    torch.save({"model_state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, path)
    return path


# head classes: 0 blank, 1 positive, 2 negative, 3 uncertain; the last (No Finding) head has 2
_WANTED = [1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 1]


def _expected() -> dict[str, float | None]:
    values = (None, 1.0, 0.0, -1.0)
    by_name = {cond: values[c] for cond, c in zip(CHEXBERT_CONDITIONS, _WANTED)}
    return {obs: by_name[obs] for obs in CHEXPERT_OBSERVATIONS}


def test_local_checkpoint_loads_and_labels(tmp_path: Path) -> None:
    path = _make_checkpoint(tmp_path / "ck", wanted=_WANTED)
    lab = get_labeler("chexbert", weights=path, batch_size=2)
    texts = ["Small left pleural effusion.", "", "Heart is enlarged. " * 200]  # the last exceeds 512 tokens
    out = lab.label(texts)
    assert out == [_expected()] * 3
    assert tuple(out[0]) == CHEXPERT_OBSERVATIONS
    assert lab.name == "chexbert" and str(path) in lab.settings["weights"]
    assert len(lab._encode(texts[2])) == 512


def test_checkpoint_without_module_prefix_and_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _make_checkpoint(tmp_path / "ck", wanted=_WANTED, prefix="")
    monkeypatch.setenv(CHEXBERT_WEIGHTS_ENV, str(path))
    assert get_labeler("chexbert").label(["No effusion."]) == [_expected()]


def test_missing_or_bad_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(LabelerUnavailable, match="nope.pth not found"):
        get_labeler("chexbert", weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LabelerUnavailable, match="could not be read"):
        get_labeler("chexbert", weights=bad)
    other = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(LabelerUnavailable, match="not a CheXbert checkpoint"):
        get_labeler("chexbert", weights=other)
    # weights without a tokenizer folder: the vocab must be found somewhere local
    lonely = tmp_path / "lonely"
    path = _make_checkpoint(lonely, wanted=_WANTED)
    (lonely / "vocab.txt").unlink()
    with pytest.raises(LabelerUnavailable, match="vocab.txt"):
        get_labeler("chexbert", weights=path, tokenizer=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("f1chexbert") is not None, reason="f1chexbert is installed here")
def test_no_weights_no_package_says_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHEXBERT_WEIGHTS_ENV, raising=False)
    with pytest.raises(LabelerUnavailable, match=CHEXBERT_WEIGHTS_ENV):
        get_labeler("chexbert")


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get(CHEXBERT_WEIGHTS_ENV),
                    reason=f"real CheXbert weights cannot be downloaded here; set {CHEXBERT_WEIGHTS_ENV}")
def test_real_chexbert_weights() -> None:
    lab = get_labeler("chexbert")
    out = lab.label(["No pleural effusion or pneumothorax.", "Moderate cardiomegaly."])
    assert out[0]["Pleural Effusion"] == 0.0 and out[1]["Cardiomegaly"] == 1.0
