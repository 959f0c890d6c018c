"""Synthetic phantoms: determinism, mask/pixel agreement, visibility, side convention, report/label
agreement, manifest validity, resume after a kill, failures recorded, CLI, and likeness to real CXRs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavarad.cli import main
from llavarad.config import ConfigError, config_from_dict
from llavarad.phantom import (
    CATEGORIES,
    DEVICES,
    FINDING_OBSERVATION,
    FINDINGS,
    AnatomySpec,
    FindingSpec,
    PhantomConfig,
    PhantomSpec,
    build_record,
    draw_phantom,
    generate_phantoms,
    load_phantom_config,
    sample_spec,
)
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS, read_manifest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: One spec per finding at its smallest severity (the hardest to see), on both sides where sided.
_SMALLEST = {
    "cardiomegaly": [(None, None, "mild")],
    "pleural_effusion": [("right", "basal", "small"), ("left", "basal", "small"), ("bilateral", "basal", "small")],
    "pneumothorax": [("right", "apical", "small"), ("left", "lateral", "small")],
    "consolidation": [("right", "upper", "small"), ("left", "lower", "small")],
    "edema": [("bilateral", "perihilar", "mild")],
    "atelectasis": [("right", "basal", "mild"), ("left", "basal", "mild")],
    "lung_lesion": [("right", "middle", "small"), ("left", "upper", "small")],
    "endotracheal_tube": [(None, "trachea", None)],
    "central_line": [("right", None, None), ("left", None, None)],
    "chest_tube": [("right", None, None), ("left", None, None)],
    "pacemaker": [("left", None, None), ("right", None, None)],
}
_CASES = [(name, *args) for name, variants in _SMALLEST.items() for args in variants]


def _with_and_without(spec: PhantomSpec, size: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Render a spec and its finding-free twin with the same noise."""
    img, masks = draw_phantom(np.random.default_rng(seed), spec, size)
    base, base_masks = draw_phantom(np.random.default_rng(seed), spec.without_findings(), size)
    assert base_masks == {}
    return img.astype(np.float64), base.astype(np.float64), masks


def test_same_seed_same_record_and_pixels():
    config = PhantomConfig(n=10, size=64, seed=3)
    for i in (0, 5):
        spec_a, rep_a, row_a, rng_a = build_record(config, i)
        spec_b, rep_b, row_b, rng_b = build_record(config, i)
        assert row_a == row_b
        img_a, masks_a = draw_phantom(rng_a, spec_a, 64)
        img_b, masks_b = draw_phantom(rng_b, spec_b, 64)
        assert np.array_equal(img_a, img_b)
        assert masks_a.keys() == masks_b.keys() and all(np.array_equal(masks_a[k], masks_b[k]) for k in masks_a)
    other = PhantomConfig(n=10, size=64, seed=4)
    spec_o, _, row_o, rng_o = build_record(other, 0)
    spec_c, _, row_c, rng_c = build_record(config, 0)
    assert row_o["id"] != row_c["id"]
    assert not np.array_equal(draw_phantom(rng_o, spec_o, 64)[0], draw_phantom(rng_c, spec_c, 64)[0])


def test_images_differ_between_records():
    config = PhantomConfig(n=4, size=64)
    images = []
    for i in range(4):
        spec, _, _, rng = build_record(config, i)
        images.append(draw_phantom(rng, spec, 64)[0].astype(np.float64))
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(images[a] - images[b]).mean() > 1.0


@pytest.mark.parametrize("name,side,location,severity", _CASES)
@pytest.mark.parametrize("size", [112])
def test_mask_marks_exactly_the_changed_pixels(name, side, location, severity, size):
    spec = PhantomSpec(AnatomySpec(), [FindingSpec(name, side, location, severity, seed=11)])
    img, base, masks = _with_and_without(spec, size)
    assert set(masks) == {name}
    mask = masks[name]
    assert mask.dtype == bool and mask.shape == (size, size)
    assert mask.sum() >= 8, f"{name} mask has only {mask.sum()} pixels at {size} px"
    diff = np.abs(img - base)
    inside = diff[mask].mean()
    # Outside the mask only a blur halo of a pixel or two may change.
    ring = np.zeros_like(mask)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            ring |= np.roll(np.roll(mask, dy, 0), dx, 1)
    far = ~ring
    assert diff[far].max() <= 3.0, f"{name} changed pixels far from its mask"
    # Clearly visible even at its smallest severity at 112 px (a tiny model must learn it).
    assert inside >= 12.0, f"{name} ({side} {location} {severity}) changes its mask by only {inside:.1f} gray levels"


@pytest.mark.parametrize("name,side,location,severity", [c for c in _CASES if c[1] in ("left", "right")])
def test_side_follows_radiological_convention(name, side, location, severity):
    """The patient's right is on the image's left."""
    spec = PhantomSpec(AnatomySpec(), [FindingSpec(name, side, location, severity, seed=5)])
    _, masks = draw_phantom(np.random.default_rng(0), spec, 112)
    cols = np.nonzero(masks[name])[1]
    if name in ("central_line", "pacemaker"):
        # Devices reach the midline (line tip, pacing leads): judge by where they start.
        rows = np.nonzero(masks[name])[0]
        cols = cols[rows <= np.percentile(rows, 20)]
    centre = cols.mean() / 112
    assert (centre < 0.5) == (side == "right"), f"{side} {name} drawn with centre x={centre:.2f}"


def test_severity_grows_the_finding():
    for name, sev in (("pleural_effusion", ("small", "moderate", "large")), ("pneumothorax", ("small", "moderate", "large")),
                      ("lung_lesion", ("small", "moderate", "large")), ("cardiomegaly", ("mild", "moderate", "severe"))):
        side = None if name == "cardiomegaly" else "left"
        areas = [draw_phantom(np.random.default_rng(0),
                              PhantomSpec(AnatomySpec(), [FindingSpec(name, side, "lateral" if name == "pneumothorax" else "upper", s, 2)]),
                              112)[1][name].sum() for s in sev]
        assert areas[0] < areas[1] < areas[2], f"{name} areas {areas}"


def test_zone_moves_the_finding_down():
    ys = []
    for zone in ("upper", "middle", "lower"):
        spec = PhantomSpec(AnatomySpec(), [FindingSpec("lung_lesion", "right", zone, "small", 3)])
        ys.append(np.nonzero(draw_phantom(np.random.default_rng(0), spec, 112)[1]["lung_lesion"])[0].mean())
    assert ys[0] < ys[1] < ys[2]


def test_config_validation_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        config_from_dict(PhantomConfig, {"n": 0, "size": 8, "split_fractions": [0.5, 0.1],
                                         "prevalence": {"pneumonia": 0.2}})
    text = str(err.value)
    for fragment in ("n: 0", "size: 8", "split_fractions", "pneumonia"):
        assert fragment in text
    with pytest.raises(ValueError, match="sum to"):
        PhantomConfig(normal_fraction=0.0, prevalence={c: 0.05 for c in CATEGORIES})
    with pytest.raises(ValueError, match="finding 'pneumonia'"):
        FindingSpec("pneumonia")


def test_prevalence_and_normal_fraction_hold_in_expectation():
    config = PhantomConfig(n=3000)
    counts = dict.fromkeys(CATEGORIES, 0)
    normal = 0
    n = 3000
    for i in range(n):
        spec = sample_spec(np.random.default_rng([1, i]), config)
        names = set(spec.names())
        normal += not names
        for cat in CATEGORIES:
            counts[cat] += (bool(names & set(DEVICES)) if cat == "support_devices" else cat in names)
    assert abs(normal / n - 0.2) < 0.03
    for cat in CATEGORIES:
        assert abs(counts[cat] / n - config.prevalence[cat]) < 0.035, (cat, counts[cat] / n)
        assert 0.18 <= counts[cat] / n <= 0.35


_SEVERITY_WORDS = {"small": ("small",), "moderate": ("moderate",), "large": ("large", "extensive"),
                   "mild": ("mild",), "severe": ("severe",)}


def _label_from_text(text: str) -> dict[str, float]:
    """An independent, minimal reading of the phantom phrasing (positives and 'no ...' negatives)."""
    out: dict[str, float] = {}
    patterns = {
        "Cardiomegaly": (r"cardiomegaly|heart is \w+ly enlarged", r"heart size is normal|heart is not enlarged"),
        "Pleural Effusion": (r"(?<!no )pleural effusion", r"no pleural effusion"),
        "Pneumothorax": (r"(?<!no )pneumothorax", r"no pneumothorax"),
        "Consolidation": (r"(?<!no focal )consolidation", r"no focal consolidation"),
        "Edema": (r"(?<!no )pulmonary edema", r"no pulmonary edema"),
        "Atelectasis": (r"atelectasis", None),
        "Lung Lesion": (r"nodule|mass\b", None),
        "Support Devices": (r"tube|line|pacemaker", None),
    }
    low = text.lower()
    for obs, (pos, neg) in patterns.items():
        if re.search(pos, low):
            out[obs] = 1.0
        elif neg and re.search(neg, low):
            out[obs] = 0.0
    return out


def test_reports_agree_with_labels_and_mentions():
    config = PhantomConfig(n=300, size=64)
    for i in range(config.n):
        spec, report, row, _ = build_record(config, i)
        assert list(row["labels"]) == list(CHEXPERT_OBSERVATIONS)
        expected = {k: v for k, v in row["labels"].items() if v is not None and k != "No Finding"}
        assert _label_from_text(row["findings"]) == expected, row["findings"]
        pathology = [f for f in spec.findings if f.finding not in DEVICES]
        assert row["labels"]["No Finding"] == (None if pathology else 1.0)
        for entry in row["phantom_findings"]:
            assert entry["sentence"] in row["findings"]
            words = re.findall(r"[\w-]+", entry["sentence"].lower())
            assert all(w in words for w in entry["words"]), (entry["words"], entry["sentence"])
            low = entry["sentence"].lower()
            if entry["side"] in ("left", "right"):
                assert entry["side"] in low
            if entry["severity"]:
                assert any(w in low for w in _SEVERITY_WORDS[entry["severity"]]), entry["sentence"]
            assert row["labels"][FINDING_OBSERVATION[entry["finding"]]] == 1.0
        assert row["indication"] and row["indication"].endswith(".")
        assert row["impression"]


def test_rule_labeler_reads_back_the_labels():
    labeler_mod = pytest.importorskip("llavarad.evaluate.rule_labeler", reason="rule labeler not available")
    config = PhantomConfig(n=200, size=64, seed=9)
    rows = [build_record(config, i)[2] for i in range(config.n)]
    got = labeler_mod.RuleLabeler().label([r["findings"] for r in rows])
    for row, labels in zip(rows, got):
        for obs in CHEXPERT_OBSERVATIONS:
            if obs in ("No Finding",):
                continue
            assert labels.get(obs) == row["labels"][obs], (obs, row["findings"])


def test_text_varies_but_is_deterministic():
    config = PhantomConfig(n=200, size=64)
    texts = [build_record(config, i)[2]["findings"] for i in range(config.n)]
    assert texts == [build_record(config, i)[2]["findings"] for i in range(config.n)]
    normals = [t for t in texts if "enlarged" not in t and "effusion." not in t]
    first_sentences = {t.split(". ")[0] for t in normals}
    assert len(first_sentences) > 3  # negatives come in varying order
    indications = {build_record(config, i)[2]["indication"] for i in range(config.n)}
    assert len(indications) > 8


def test_generate_writes_a_valid_dataset(tmp_path):
    config = PhantomConfig(n=12, size=64, seed=1, split_fractions=[0.5, 0.25, 0.25])
    summary = generate_phantoms(config, tmp_path / "ph")
    assert (summary.written, summary.skipped, summary.failed) == (12, 0, 0)
    records = read_manifest(tmp_path / "ph" / "manifest.jsonl")
    assert len(records) == 12
    assert {r.split for r in records} == {"train", "validate", "test"}
    assert [r.split for r in records].count("train") == 6
    for rec in records:
        assert rec.dataset == "phantom" and rec.view == "PA" and rec.text_source == "original"
        img = Image.open(tmp_path / "ph" / rec.image)
        assert img.mode == "L" and img.size == (64, 64)
        for entry in rec.extra["phantom_findings"]:
            assert set(entry) >= {"finding", "side", "location", "severity", "mask", "words"}
            mask = np.asarray(Image.open(tmp_path / "ph" / entry["mask"]))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    saved = json.loads((tmp_path / "ph" / "phantom_config.json").read_text())
    assert config_from_dict(PhantomConfig, saved) == config
    assert load_phantom_config(tmp_path / "ph" / "phantom_config.json") == config
    assert summary.finding_counts.keys() == set(FINDINGS)


def test_resume_after_kill_redraws_nothing_and_loses_nothing(tmp_path):
    config = PhantomConfig(n=8, size=48, seed=2)
    out = tmp_path / "ph"
    generate_phantoms(config, out)
    manifest = out / "manifest.jsonl"
    full = manifest.read_bytes()
    images = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    # Simulate a kill mid-run: the last record's line is torn and its image never got written.
    lines = full.split(b"\n")
    manifest.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][:25])
    last_id = json.loads(lines[7])["id"]
    (out / "images" / f"{last_id}.png").unlink()
    summary = generate_phantoms(config, out)
    assert (summary.skipped, summary.written, summary.failed) == (6, 2, 0)
    assert manifest.read_bytes() == full
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == images
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(ValueError, match="different settings"):
        generate_phantoms(PhantomConfig(n=8, size=64, seed=2), out)


def test_unwritable_record_is_recorded_and_the_rest_continue(tmp_path):
    config = PhantomConfig(n=5, size=48, seed=0)
    out = tmp_path / "ph"
    (out / "images" / "ph0_000002.png").mkdir(parents=True)  # a folder where the image must go
    summary = generate_phantoms(config, out)
    assert (summary.written, summary.failed) == (4, 1)
    err = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert err[0]["id"] == "ph0_000002" and "ph0_000002" in err[0]["error"]
    assert [r.id for r in read_manifest(out / "manifest.jsonl")] == ["ph0_000000", "ph0_000001", "ph0_000003", "ph0_000004"]
    (out / "images" / "ph0_000002.png").rmdir()
    again = generate_phantoms(config, out)
    assert (again.written, again.skipped, again.failed) == (1, 4, 0)


def test_cli_phantom(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["phantom", "--out", str(out), "--n", "6", "--size", "48", "--seed", "5",
               "--split-fractions", "0.5,0.25,0.25", "--prevalence", "pneumothorax=0.5", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 6 and summary["failed"] == 0
    config = json.loads((out / "phantom_config.json").read_text())
    assert config["prevalence"]["pneumothorax"] == 0.5 and config["split_fractions"] == [0.5, 0.25, 0.25]
    assert len(read_manifest(out / "manifest.jsonl")) == 6
    # Same settings resume (nothing to do); different settings are refused with a clear message.
    assert main(["phantom", "--out", str(out), "--n", "6", "--size", "48", "--seed", "5",
                 "--split-fractions", "0.5,0.25,0.25", "--prevalence", "pneumothorax=0.5"]) == 0
    assert "0 drawn, 6 already present" in capsys.readouterr().out
    assert main(["phantom", "--out", str(out), "--n", "6", "--size", "64"]) == 1
    assert "different settings" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "bad"), "--split-fractions", "0.9,0.2,0.1"]) == 1
    assert "split_fractions" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "bad2"), "--prevalence", "pneumonia=0.3"]) == 1
    assert "pneumonia" in capsys.readouterr().err
    assert main(["phantom", "--help"]) == 0
    assert "llavarad phantom --out" in capsys.readouterr().out


def test_layout_resembles_real_radiographs(shared_data):
    """Mean left-to-right brightness profile (bright mediastinum between dark lungs) matches real CXRs."""
    def profile(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        s = a.shape[0]
        col = a[int(s * 0.25) : int(s * 0.7)].mean(0)
        col = np.interp(np.linspace(0, s - 1, 56), np.arange(s), col)
        return (col - col.mean()) / col.std()

    real_files = sorted((shared_data / "images").glob("000*.png"))
    if not real_files:
        pytest.skip("no NIH ChestX-ray14 PNGs in shared data")
    real = np.mean([profile(np.asarray(Image.open(f).convert("L").resize((224, 224)))) for f in real_files], 0)
    config = PhantomConfig(n=24, size=112)
    phantoms = []
    for i in range(config.n):
        spec, _, _, rng = build_record(config, i)
        phantoms.append(profile(draw_phantom(rng, spec, 112)[0]))
    assert np.corrcoef(real, np.mean(phantoms, 0))[0, 1] > 0.6


def test_workers_give_identical_output(tmp_path):
    config = PhantomConfig(n=9, size=48, seed=6)
    generate_phantoms(config, tmp_path / "one")
    summary = generate_phantoms(config, tmp_path / "two", workers=2)
    assert summary.written == 9
    assert (tmp_path / "one" / "manifest.jsonl").read_bytes() == (tmp_path / "two" / "manifest.jsonl").read_bytes()
    for sub in ("images", "masks"):
        one = {p.name: p.read_bytes() for p in (tmp_path / "one" / sub).iterdir()}
        two = {p.name: p.read_bytes() for p in (tmp_path / "two" / sub).iterdir()}
        assert one == two
    with pytest.raises(ValueError, match="workers=0"):
        generate_phantoms(config, tmp_path / "three", workers=0)


def test_fixed_phrasing_changes_only_the_wording():
    varied = PhantomConfig(n=60, size=48)
    fixed = PhantomConfig(n=60, size=48, phrasing="fixed")
    texts = set()
    for i in range(60):
        spec_v, _, row_v, rng_v = build_record(varied, i)
        spec_f, _, row_f, rng_f = build_record(fixed, i)
        assert row_v["labels"] == row_f["labels"] and spec_v == spec_f
        assert np.array_equal(draw_phantom(rng_v, spec_v, 48)[0], draw_phantom(rng_f, spec_f, 48)[0])
        assert _label_from_text(row_f["findings"]) == {k: v for k, v in row_f["labels"].items()
                                                       if v is not None and k != "No Finding"}
        texts.add(row_f["findings"])
        if not spec_f.findings:
            # negatives always in one canonical order, with one phrasing each
            canonical = ["No pneumothorax.", "No pleural effusion.", "Heart size is normal.", "No focal consolidation.",
                         "No pulmonary edema.", "Lungs are clear."]
            sentences = re.split(r"(?<=\.) ", row_f["findings"])
            assert all(s in canonical for s in sentences), sentences
            assert sentences == sorted(sentences, key=canonical.index)
    assert len(texts) < 60
    with pytest.raises(ConfigError, match="phrasing"):
        config_from_dict(PhantomConfig, {"phrasing": "terse"})


@pytest.mark.parametrize("name", ["lung_lesion", "consolidation"])
def test_reported_finding_is_never_hidden_behind_a_large_heart(name):
    """A nodule or consolidation in the left lower zone must move onto lung that is still visible."""
    for seed in range(12):
        spec = PhantomSpec(AnatomySpec(), [FindingSpec("cardiomegaly", None, None, "severe", seed),
                                           FindingSpec(name, "left", "lower", "small", seed)])
        img, base, masks = _with_and_without(spec, 112)
        mask = masks[name] & ~masks["cardiomegaly"]
        assert mask.sum() >= 20, f"seed {seed}: {name} nearly invisible ({mask.sum()} px)"


def test_every_sampled_finding_has_a_visible_mask():
    config = PhantomConfig(n=150, size=64, seed=77)
    for i in range(config.n):
        spec, _, _, rng = build_record(config, i)
        _, masks = draw_phantom(rng, spec, 64)
        assert set(masks) == set(spec.names())
        for name, mask in masks.items():
            assert mask.sum() >= 4, f"record {i}: {name} mask has {mask.sum()} px"


def test_cli_config_file_with_overrides(tmp_path, capsys):
    cfg = tmp_path / "ph.yaml"
    cfg.write_text("n: 4\nsize: 40\nphrasing: fixed\nprevalence:\n  edema: 0.3\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["phantom", "--out", str(out), "--config", str(cfg), "--n", "3"]) == 0
    saved = load_phantom_config(out / "phantom_config.json")
    assert (saved.n, saved.size, saved.phrasing, saved.prevalence["edema"]) == (3, 40, "fixed", 0.3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: many\nsizes: 3\n", encoding="utf-8")
    assert main(["phantom", "--out", str(tmp_path / "o2"), "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "n: expected an integer, got 'many'" in err and "sizes" in err
