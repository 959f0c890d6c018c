"""The demo's report card: ``report_card.json`` (every figure), ``report_card.md`` and a
self-contained ``report_card.html`` (no script, no external resource: images are inline data URIs)
that shows the held-out phantoms beside their reference and generated findings, the
per-observation F1 plot of the evaluation, one word's attention heat map and the stage timings.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llavarad.phantom._demo_config import DemoConfig

__all__ = ["HEAT_MAP_WORDS", "card_html", "card_markdown", "choose_word", "headline", "read_heat_map", "write_card"]

#: Words the heat map prefers (finding names first), so it shows where the model looked for one
HEAT_MAP_WORDS = ("pneumothorax", "effusion", "consolidation", "cardiomegaly", "enlarged", "edema", "atelectasis",
                  "nodule", "mass", "lesion", "opacity", "tube", "catheter", "line", "pacemaker")


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The five figures the CLI prints, rounded."""
    out = {}
    for key in ("Micro-F1-14", "Macro-F1-14", "Micro-F1-5", "BLEU-4", "ROUGE-L"):
        m = metrics.get(key)
        out[key] = None if not m else round(float(m["value"]), 2)
    return out




def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _last_stage1_loss(stage1_dir: Path) -> float | None:
    log = stage1_dir / "train_log.jsonl"
    if not log.is_file():
        return None
    losses = [r.get("loss") for r in map(json.loads, log.read_text().splitlines()) if r.get("loss") is not None]
    return losses[-1] if losses else None


def write_card(cfg: DemoConfig, out: Path, manifest: Path, lm_dir: Path, stage1_dir: Path, predictions: Path,
               eval_dir: Path, timings: dict[str, Any]) -> dict[str, Any]:
    """Write ``report_card.json``, ``.md`` and ``.html`` into ``out`` from the demo's outputs; return the card."""
    from llavarad.io.manifest import read_jsonl

    splits: dict[str, int] = {}
    for _, row in read_jsonl(manifest):
        splits[row["split"]] = splits.get(row["split"], 0) + 1
    metrics = _read_json(eval_dir / "metrics.json")
    lm = _read_json(lm_dir / "lm_summary.json")
    s2, s3 = _read_json(out / "stage2" / "train_summary.json"), _read_json(out / "stage3" / "train_summary.json")
    rows = [row for _, row in read_jsonl(predictions)]
    examples = [{k: r.get(k) for k in ("id", "image", "indication", "reference", "prediction")}
                for r in rows[:cfg.num_examples]]
    losses = {"lm": {"first": lm.get("first_loss"), "final": lm.get("final_loss")},
              "stage1": {"final": _last_stage1_loss(stage1_dir)},
              "stage2": {"first": s2.get("first_loss"), "final": s2.get("final_loss")},
              "stage3": {"first": s3.get("first_loss"), "final": s3.get("final_loss")}}
    card = {
        "data": {"phantoms": sum(splits.values()), "splits": splits, "evaluated": metrics.get("n"),
                 "blank_images": cfg.blank_images, "coded_images": cfg.coded_images,
                 "generation_errors": sum(1 for r in rows if r.get("error"))},
        "losses": losses,
        "timings_s": {**{k: v for k, v in timings.items() if k != "cpu_s"},
                      "total": round(sum(v for v in timings.values() if isinstance(v, (int, float))), 1)},
        "cpu_s": {**timings.get("cpu_s", {}), "total": round(sum(timings.get("cpu_s", {}).values()), 1)},
        "metrics": {k: v for k, v in (metrics.get("metrics") or {}).items() if v is not None},
        "headline": headline(metrics.get("metrics") or {}),
        "examples": examples,
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
    }
    (out / "report_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "report_card.md").write_text(card_markdown(card), encoding="utf-8")
    page = card_html(card, f1_plot=eval_dir / "per_observation_f1.png", heat_map=read_heat_map(out / "explain"))
    (out / "report_card.html").write_text(page, encoding="utf-8")
    return card


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown: metrics, losses, timings and example reports."""
    d = card["data"]
    control = (" with BLANK images (control)" if d["blank_images"] else
               " with CODED images (control: each finding a square with its own place and grey level)"
               if d.get("coded_images") else "")
    splits = ", ".join(f"{k} {v}" for k, v in sorted(d["splits"].items()))
    lines = ["# llavarad demo report card", "",
             f"Synthetic phantoms: {d['phantoms']} ({splits}); evaluated on {d['evaluated']} held-out test phantoms{control}.",
             "",
             "## Metrics (rule labeler, 14 CheXpert observations; 95% bootstrap CI)", "",
             "| metric | value | CI |", "|---|---|---|"]
    for name, m in card["metrics"].items():
        lines.append(f"| {name} | {m['value']:.1f} | {m['ci_low']:.1f}-{m['ci_high']:.1f} |")
    lines += ["", "## Losses", "", "| stage | first | final |", "|---|---|---|"]
    for stage, v in card["losses"].items():
        lines.append(f"| {stage} | {_fmt(v.get('first'))} | {_fmt(v.get('final'))} |")
    lines += ["", "## Time per stage", "", "| stage | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {card['cpu_s'].get(k, '-')} |" for k, v in card["timings_s"].items()]
    lines += ["", "## Examples (held-out phantoms)", ""]
    for ex in card["examples"]:
        lines += [f"**{ex['id']}**, indication: {ex['indication'] or '-'}", "",
                  "| reference | generated |", "|---|---|",
                  f"| {(ex['reference'] or '').replace('|', '/')} | {(ex['prediction'] or '').replace('|', '/')} |", ""]
    return "\n".join(lines) + "\n"


def choose_word(words: list[str]) -> int | None:
    """Index of the word to show a heat map for: the first finding word, else the longest word."""
    lowered = [w.lower().strip(".,;:") for w in words]
    for target in HEAT_MAP_WORDS:
        if target in lowered:
            return lowered.index(target)
    return max(range(len(words)), key=lambda i: len(lowered[i])) if words else None


def read_heat_map(folder: Path) -> dict[str, Any] | None:
    """``{"id", "word", "text", "image", "overlay"}`` written by the demo's explain step, or None."""
    path = Path(folder) / "chosen.json"
    if not path.is_file():
        return None
    chosen = json.loads(path.read_text(encoding="utf-8"))
    return {**chosen, "image": Path(folder) / chosen["image"], "overlay": Path(folder) / chosen["overlay"]}


def _data_uri(path: str | Path | None, max_side: int | None = None) -> str | None:
    """A PNG data URI of the image at ``path`` (shrunk to ``max_side``), or None when unreadable."""
    if not path or not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
    if max_side:
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str | None, alt: str, cls: str = "") -> str:
    if uri is None:
        return f'<p class="missing">({html.escape(alt)}: not available)</p>'
    return f'<img class="{cls}" src="{uri}" alt="{html.escape(alt)}">'


_CSS = """body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left} .ex{display:grid;grid-template-columns:180px 1fr 1fr;gap:.8em;align-items:start;
border-top:1px solid #ddd;padding:.8em 0} .ex img{width:170px;border:1px solid #999} .bar{background:#48c;height:.9em}
.pair{display:flex;gap:1.5em;flex-wrap:wrap} .pair img{width:260px;border:1px solid #999} .plot{max-width:100%}
mark{background:#fd6} .missing{color:#999}"""


def _examples_html(card: dict[str, Any]) -> str:
    rows = ['<div class="ex"><b>phantom</b><b>reference findings</b><b>generated findings</b></div>']
    for ex in card["examples"]:
        ind = html.escape(ex.get("indication") or "-")
        rows.append(f'<div class="ex"><div>{_img(_data_uri(ex.get("image"), 170), ex["id"])}'
                    f'<br><small>{html.escape(ex["id"])}<br>indication: {ind}</small></div>'
                    f'<div>{html.escape(ex.get("reference") or "")}</div>'
                    f'<div>{html.escape(ex.get("prediction") or "")}</div></div>')
    return "\n".join(rows)


def _timings_html(card: dict[str, Any]) -> str:
    stages = {k: v for k, v in card["timings_s"].items() if k != "total" and isinstance(v, (int, float))}
    longest = max(stages.values(), default=0) or 1
    rows = [f'<tr><td>{html.escape(k)}</td><td>{v:.1f}</td><td>{card["cpu_s"].get(k, "-")}</td>'
            f'<td style="width:20em"><div class="bar" style="width:{100 * v / longest:.1f}%"></div></td></tr>'
            for k, v in stages.items()]
    total = card["timings_s"].get("total", "-")
    return ("<table><tr><th>stage</th><th>wall s</th><th>CPU s</th><th></th></tr>" + "".join(rows)
            + f"<tr><th>total</th><th>{total}</th><th>{card['cpu_s'].get('total', '-')}</th><th></th></tr></table>")


def _heat_map_html(heat: dict[str, Any] | None) -> str:
    if heat is None:
        return '<p class="missing">(no heat map: the explain step did not run)</p>'
    word = html.escape(heat["word"])
    text = html.escape(heat.get("text") or "").replace(word, f"<mark>{word}</mark>", 1)
    return (f'<p>Where the model attended while writing <mark>{word}</mark> for phantom '
            f'{html.escape(heat["id"])} (attention over the image tokens, min-max normalised):</p>'
            f'<div class="pair">{_img(_data_uri(heat["image"], 260), "phantom")}'
            f'{_img(_data_uri(heat["overlay"], 260), "heat map of " + heat["word"])}</div><p>{text}</p>')


def card_html(card: dict[str, Any], *, f1_plot: Path | None, heat_map: dict[str, Any] | None) -> str:
    """The card as one self-contained HTML page (inline CSS and data-URI images only)."""
    d = card["data"]
    control = (" with <b>blank</b> images (control)" if d.get("blank_images") else
               " with <b>coded</b> images (control)" if d.get("coded_images") else "")
    splits = ", ".join(f"{k} {v}" for k, v in sorted(d["splits"].items()))
    metrics = "".join(f"<tr><td>{html.escape(k)}</td><td>{m['value']:.1f}</td><td>{m['ci_low']:.1f}-{m['ci_high']:.1f}"
                      "</td></tr>" for k, m in card["metrics"].items())
    losses = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v.get('first'))}</td><td>{_fmt(v.get('final'))}</td></tr>"
                     for k, v in card["losses"].items())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>llavarad demo report card</title>
<style>{_CSS}</style></head><body>
<h1>llavarad demo report card</h1>
<p>Synthetic phantoms: {d['phantoms']} ({html.escape(splits)}); evaluated on {d['evaluated']} held-out test
phantoms{control}.</p>
<h2 id="metrics">Metrics</h2><p>Rule labeler, 14 CheXpert observations; 95% bootstrap CI.</p>
<table><tr><th>metric</th><th>value</th><th>CI</th></tr>{metrics}</table>
<h2 id="f1">Per-observation F1</h2>{_img(_data_uri(f1_plot), "per-observation F1 plot", "plot")}
<h2 id="heatmap">One word's heat map</h2>{_heat_map_html(heat_map)}
<h2 id="examples">Held-out phantoms</h2>{_examples_html(card)}
<h2 id="timings">Stage timings</h2>{_timings_html(card)}
<h2 id="losses">Losses</h2><table><tr><th>stage</th><th>first</th><th>final</th></tr>{losses}</table>
</body></html>
"""
