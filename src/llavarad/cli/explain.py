"""``llavarad explain``: word-level attention maps over the image."""

from __future__ import annotations

from pathlib import Path

import click

from llavarad.attention import DEFAULT_METHOD, METHODS


@click.command("explain")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="llavarad model folder.")
@click.option("--indication", default=None, help="Indication for the image.")
@click.option("--word", "words", multiple=True, help="Only print these words' peak cells (all words are rendered).")
@click.option("--layer", type=int, default=None, help="0-based LM layer (default: the relative depth of layer 20 of 32).")
@click.option("--head", type=int, default=None, help="One head of --layer (with --method layer-head).")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="How a token's map is made (docs/attention.md): one layer's head mean (the paper's), one head, "
                   "mean or max over layers, attention rollout, or gradient-weighted attention.")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def explain_cmd(image: Path, model_dir: Path, indication: str | None, words: tuple[str, ...], layer: int | None,
                head: int | None, method: str, max_new_tokens: int, device: str, dtype: str, out_dir: Path) -> None:
    """Generate findings and show, for each word, where on the image the model attended.

    \b
    Example:
      llavarad explain cxr.png --model models/llava-rad --indication "Cough." --out explain/
      (then open explain/index.html)
    """
    import numpy as np

    from llavarad._attention_render import write_explanation
    from llavarad.attention import explain
    from llavarad.io.images import ImageReadError, read_cxr
    from llavarad.model.build import ModelFolderError, load_model

    try:
        cxr = read_cxr(image)
        bundle = load_model(model_dir, device=device, dtype=dtype)
        expl = explain(bundle, cxr.image, indication, max_new_tokens=max_new_tokens, layer=layer, head=head,
                       method=method)
    except (ImageReadError, ModelFolderError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    write_explanation(expl, cxr.image, out_dir)
    click.echo(expl.text)
    for w in words:
        m = expl.map_for(w)
        if m is None:
            click.echo(f"  {w!r}: not in the generated text", err=True)
            continue
        r, c = np.unravel_index(int(m.argmax()), m.shape)
        click.echo(f"  {w!r}: peak at grid cell row {r}, column {c} of {expl.grid}x{expl.grid}")
    click.echo(f"{len(expl.words)} words; maps and overlays in {out_dir} (open {out_dir / 'index.html'})")


def register(group: click.Group) -> None:
    """Add the explain verb."""
    group.add_command(explain_cmd)
