"""The demo's parts: LM pretraining output feeds init_from_parts; config checks; the full run (slow)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from llavarad.phantom.demo import DemoConfig, run_demo  # noqa: E402
from llavarad.phantom.report_card import card_markdown  # noqa: E402
from llavarad.model.processor import IGNORE_INDEX  # noqa: E402
from llavarad.phantom.lm_pretrain import LmPretrainConfig, _encode, lm_training_texts, pretrain_lm  # noqa: E402

FINDINGS = ["The heart is enlarged.", "No pleural effusion.", "Small left pneumothorax.", "Lungs are clear."]


def test_lm_texts_and_loss_masks():
    pairs = lm_training_texts(["Cough.", None], FINDINGS[:2])
    assert [t for c, t in pairs if not c] == FINDINGS[:2]
    convo = [(c, t) for c, t in pairs if c]
    assert "<image>" not in convo[0][0] and "indication: Cough." in convo[0][0] and convo[0][0].endswith("ASSISTANT:")
    assert convo[0][1] == " " + FINDINGS[0]

    from llavarad.model.tokenizer import build_tokenizer

    tok = build_tokenizer(FINDINGS)
    ids, labels = _encode(tok, convo[0][0], convo[0][1], 512)
    n_ctx = 1 + len(tok(convo[0][0], add_special_tokens=False)["input_ids"])
    assert labels[:n_ctx] == [IGNORE_INDEX] * n_ctx
    assert tok.decode(labels[n_ctx:]) == " " + FINDINGS[0] + "</s>"
    ids, labels = _encode(tok, "", FINDINGS[1], 512)
    assert labels[0] == IGNORE_INDEX and labels[1:] == ids[1:]
    ids, labels = _encode(tok, convo[0][0] * 5, " Clear.", 24)  # context too long: it loses its start
    target = tok(" Clear.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ids) == 24 and ids[0] == tok.bos_token_id and labels[-len(target):] == target
    assert labels[:-len(target)] == [IGNORE_INDEX] * (24 - len(target))


def test_pretrained_lm_assembles_with_a_dinov2_folder(tmp_path, tiny_bundle):
    from llavarad.model.build import init_from_parts, load_model, save_model

    texts = lm_training_texts(["Cough."] * 4, FINDINGS)
    summary = pretrain_lm(texts, tmp_path / "lm", LmPretrainConfig(preset="tiny", steps=8, batch_size=4,
                                                                   vocab_size=300, warmup_steps=2))
    assert summary["final_loss"] < summary["first_loss"]
    tiny_bundle.model.model.vision_tower.save_pretrained(tmp_path / "vision")
    bundle = init_from_parts(tmp_path / "vision", tmp_path / "lm", preset="tiny", prompt_format="plain")
    save_model(bundle, tmp_path / "init")
    again = load_model(tmp_path / "init", device="cpu", dtype="float32")
    assert again.prompt_format == "plain"
    assert len(again.tokenizer) == again.model.config.text_config.vocab_size


def test_demo_config_validation():
    with pytest.raises(ValueError, match="n=10"):
        DemoConfig(n=10)
    with pytest.raises(ValueError, match="image_size=100"):
        DemoConfig(image_size=100)
    with pytest.raises(ValueError, match="phrasing: 'free'"):
        DemoConfig(phrasing="free")
    with pytest.raises(ValueError, match=r"split_fractions=\[0.9, 0.1, 0.0\]"):
        DemoConfig(split_fractions=(0.9, 0.1, 0.0))
    with pytest.raises(ValueError, match="stage1_warmup=1.5"):
        DemoConfig(stage1_warmup=1.5)
    with pytest.raises(ValueError, match="lora_dropout=1.0"):
        DemoConfig(lora_dropout=1.0)
    with pytest.raises(ValueError, match="stage1_image_pool='attention'"):
        DemoConfig(stage1_image_pool="attention")


def test_demo_config_takes_one_control_at_a_time():
    assert DemoConfig(coded_images=True).coded_images
    with pytest.raises(ValueError, match="blank_images and coded_images"):
        DemoConfig(blank_images=True, coded_images=True)


def test_coded_image_draws_one_square_per_category_at_its_place():
    import numpy as np

    from llavarad.phantom.demo import coded_image

    px = np.asarray(coded_image({"cardiomegaly", "support_devices"}, 112))
    assert px.shape == (112, 112)
    assert (px[:28, :28] == 110).all() and (px[84:, 84:] == 250).all()  # first and last category
    inner = px[1:-1, 1:-1]
    assert (inner[:27, 27:] == 60).all() and (inner[27:83] == 60).all()  # everything else is background
    empty = np.asarray(coded_image(set(), 56))
    assert (empty[1:-1, 1:-1] == 60).all() and (empty[0] == 100).all()  # a frame: never a uniform image
    with pytest.raises(ValueError, match=r"unknown finding categories \['pacemaker'\]"):
        coded_image({"pacemaker"}, 112)


def test_coded_manifest_maps_devices_to_one_category_and_keeps_every_record(tmp_path):
    import numpy as np
    from PIL import Image

    from llavarad.phantom.demo import _coded_manifest

    rows = [{"id": "a", "image": "images/a.png", "split": "train", "findings": "x",
             "phantom_findings": [{"finding": "central_line"}, {"finding": "lung_lesion"}]},
            {"id": "b", "image": "images/b.png", "split": "test", "findings": "y", "phantom_findings": []}]
    src = tmp_path / "manifest.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _coded_manifest(src, tmp_path / "coded", 56)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in got] == ["a", "b"] and got[1]["findings"] == "y"
    a = np.asarray(Image.open(got[0]["image"]))
    assert (a[42:, 42:] == 250).all()  # support devices: last cell
    assert (a[42:, 14:28] == 230).all()  # lung lesion: row 3, column 1
    assert int((a >= 110).sum()) == 2 * 14 * 14
    assert not (np.asarray(Image.open(got[1]["image"])) >= 110).any()
    assert _coded_manifest(src, tmp_path / "coded", 56).read_text() == out.read_text()  # a rerun reuses the images
    assert not list((tmp_path / "coded" / "images").glob("*.tmp"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[1], "id": "c", "phantom_findings": [{"finding": "fracture"}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 1 \(record 'c'\): unknown finding categories \['fracture'\]"):
        _coded_manifest(bad, tmp_path / "coded_bad", 56)


def test_blank_manifest_points_every_record_at_one_grey_image(tmp_path):
    import numpy as np
    from PIL import Image

    from llavarad.phantom.demo import _blank_manifest

    src = tmp_path / "manifest.jsonl"
    src.write_text("".join(json.dumps({"id": i, "image": f"images/{i}.png", "findings": "x"}) + "\n" for i in "ab"))
    got = [json.loads(line) for line in _blank_manifest(src, tmp_path / "blank", 28).read_text().splitlines()]
    assert [r["id"] for r in got] == ["a", "b"] and got[0]["image"] == got[1]["image"]
    assert (np.asarray(Image.open(got[0]["image"])) == 128).all()
    assert not list((tmp_path / "blank").glob("*.tmp")) and not list((tmp_path / "blank").glob("*.partial"))


def test_report_card_markdown_lists_metrics_losses_times_and_examples():
    card = {"data": {"phantoms": 10, "splits": {"train": 8, "test": 2}, "evaluated": 2, "blank_images": False},
            "metrics": {"Micro-F1-14": {"value": 91.5, "ci_low": 80.0, "ci_high": 99.0}},
            "losses": {"stage2": {"first": 3.2, "final": 0.5}},
            "timings_s": {"stage2": 12.5, "total": 12.5}, "cpu_s": {"stage2": 20.0, "total": 20.0},
            "examples": [{"id": "ph1", "indication": "Cough.", "reference": "A | B", "prediction": "A"}]}
    md = card_markdown(card)
    assert "| Micro-F1-14 | 91.5 | 80.0-99.0 |" in md
    assert "| stage2 | 3.200 | 0.500 |" in md and "| stage2 | 12.5 | 20.0 |" in md
    assert "| A / B | A |" in md


def test_cli_demo_help():
    from llavarad.cli import main

    assert main(["demo", "--help"]) == 0
    assert main(["train", "stage3", "--help"]) == 0


def test_cli_demo_refuses_two_controls_before_doing_anything(tmp_path, capsys):
    from llavarad.cli import main

    assert main(["demo", "--blank-images", "--coded-images", "--out", str(tmp_path / "d")]) == 2
    assert "set at most one" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_cli_demo_overrides_reach_the_config_and_bad_ones_are_refused_together(tmp_path, capsys, monkeypatch):
    import llavarad.phantom.demo
    from llavarad.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "stage1_image_pool=sum", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "stage1_image_pool: 'sum' is not one of" in err and "bogus: unknown field" in err
    assert not (tmp_path / "d").exists()

    seen = []

    def fake_run_demo(cfg, out, fresh=False, progress=None, train_callbacks=()):  # records what the CLI built
        seen.append(cfg)
        assert [type(c).__name__ for c in train_callbacks] == ["TrainerProgress"]  # stages 1-3 draw the bar
        return {"headline": {}}

    monkeypatch.setattr(llavarad.phantom.demo, "run_demo", fake_run_demo)
    assert main(["demo", "--out", str(tmp_path / "d"), "--n", "300", "stage3_epochs=3", "stage1_image_pool=max",
                 "lm.steps=20", "blank_images=true"]) == 0
    cfg = seen[-1]
    assert (cfg.n, cfg.stage3_epochs, cfg.stage1_image_pool, cfg.lm.steps, cfg.blank_images) == (300, 3, "max", 20, True)
    assert cfg.stage2_epochs == DemoConfig().stage2_epochs  # untouched fields keep the demo's defaults


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_setting_and_resumes(tmp_path):
    pytest.importorskip("llavarad.train.stage1_encoder")
    cfg = DemoConfig(n=60, image_size=56, preset="tiny", stage1_epochs=1, stage1_batch=16, stage2_epochs=1,
                     stage3_epochs=1, lora_r=4, batch_size=8, max_new_tokens=16,
                     lm=LmPretrainConfig(preset="tiny", steps=5, batch_size=4, vocab_size=400, warmup_steps=1))
    card = run_demo(cfg, tmp_path / "demo")
    out = tmp_path / "demo"
    for name in ("report_card.md", "report_card.json", "report_card.html", "predictions.jsonl", "eval/metrics.json",
                 "eval/per_observation_f1.png", "explain/chosen.json", "stage3/llavarad.json",
                 "stage1/image_encoder/config.json"):
        assert (out / name).is_file(), name
    page = (out / "report_card.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "http" not in page  # plot, heat map, phantoms inline
    assert card["data"]["evaluated"] == card["data"]["splits"]["test"]
    assert set(card["timings_s"]) >= {"phantoms", "lm", "stage1", "init", "stage2", "stage3", "generate", "evaluate",
                                      "explain"}
    seen = []
    run_demo(cfg, out, progress=lambda stage, status, s: seen.append((stage, status)))
    assert all(status.startswith("done earlier") for stage, status in seen if stage != "report")
    assert json.loads((out / "report_card.json").read_text())["headline"]["Micro-F1-14"] is not None
    # the demo's settings reach the stages: mean-pooled CLIP in stage 1, dropout-free LoRA in stage 3
    assert json.loads((out / "stage1" / "clip_config.json").read_text())["config"]["image_pool"] == "mean"
    assert json.loads((out / "stage3" / "llavarad.json").read_text())["train_config"]["lora"]["dropout"] == 0.0
    # the coded-images control shares the phantoms and LM but trains its own encoder on the codes
    coded = run_demo(DemoConfig(**{**cfg.__dict__, "coded_images": True, "shared_from": out}), tmp_path / "coded")
    assert coded["data"]["coded_images"] and coded["data"]["evaluated"] == card["data"]["evaluated"]
    assert (tmp_path / "coded" / "stage1" / "image_encoder" / "config.json").is_file()
    assert not (tmp_path / "coded" / "lm").exists() and not (tmp_path / "coded" / "phantoms").exists()
    s1 = (tmp_path / "coded" / "stage1" / "stage1_config.yaml").read_text()
    assert str(tmp_path / "coded" / "coded" / "manifest.jsonl") in s1
