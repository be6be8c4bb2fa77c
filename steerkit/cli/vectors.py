"""`steerkit extract`, `steerkit steer`, `steerkit read`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..vectors.methods import METHODS
from .app import main
from .common import BLOCKS, POOLING, POSITIVE_INT, SEED, console, device_options
from .progress import progress_bar

if TYPE_CHECKING:
    from ..capture import BlockSpec, Pooling
    from ..models.loading import Placement

SHORT_TEXT_TOKENS = 30  # `read` notes that fewer tokens read less reliably (heldout story openings, docs/vectors.md)


@main.command()
@click.option("--stories", default="corpora", show_default=True, type=click.Path(), help="Corpus folder.")
@click.option("--model", "-m", default=None, help="Model spec (default: smollm2-135m).")
@device_options
@click.option(
    "--layers", type=BLOCKS, default=None, help="Blocks, e.g. 10,15 | 0.5 | 4:-1 (default: 8 spread over 25%-85%)."
)
@click.option(
    "--method",
    type=click.Choice(list(METHODS)),
    default="caa",
    show_default=True,
    help="Vector method: " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + " (docs/vectors.md).",
)
@click.option(
    "--pooling", type=POOLING, default=None, help="last | mean | mean_after:N (default mean_after:1, measured best)."
)
@click.option("--out", default=None, type=click.Path(), help="Run folder (default: a new folder under runs/).")
@click.option(
    "--vectors-dtype",
    "vec_dtype",
    type=click.Choice(["float32", "bf16", "fp16"]),
    default="float32",
    show_default=True,
    help="dtype of the saved vectors.",
)
@click.option(
    "--max-batch-tokens",
    default=1024,
    type=POSITIVE_INT,
    show_default=True,
    help="Padded tokens per forward batch (1024 measured fastest on a 2-core CPU; raise it on a GPU).",
)
@click.option("--no-preflight", is_flag=True, help="Skip the apparatus preflight.")
@click.option("--allow-untrained", is_flag=True, help="Let random models pass the preflight (tests).")
@click.option("--no-cache", is_flag=True, help="Do not use the activation cache.")
@click.option(
    "--probe",
    "probe_kind",
    type=click.Choice(["lda", "logistic"]),
    default="lda",
    show_default=True,
    help="Readout probe fitted per layer for `read`: shrinkage LDA or multinomial logistic regression.",
)
@click.option("--no-probe", is_flag=True, help="Do not fit the readout probe (`read` then projects on the vectors).")
def extract(
    stories: str,
    model: str | None,
    placement: Placement,
    layers: BlockSpec | None,
    method: str,
    pooling: Pooling | None,
    out: str | None,
    vec_dtype: str,
    max_batch_tokens: int,
    no_preflight: bool,
    allow_untrained: bool,
    no_cache: bool,
    probe_kind: str,
    no_probe: bool,
) -> None:
    """Concept vectors from a story corpus -> a run folder (readout + activations)."""
    from ..errors import SteerkitError
    from ..vectors.extract import DEFAULT_POOLING, ExtractConfig
    from ..vectors.extract import extract as run_extract

    try:
        cfg = ExtractConfig(
            stories=stories,
            model=model,
            layers=layers,
            method=method,
            pooling=pooling or DEFAULT_POOLING,
            out=out,
            dtype=vec_dtype,
            max_batch_tokens=max_batch_tokens,
            preflight=not no_preflight,
            allow_untrained=allow_untrained,
            cache=not no_cache,
            probe=None if no_probe else probe_kind,
        )
    except ValueError as e:
        raise SteerkitError(str(e)) from e
    with progress_bar("extract") as bar:
        run = run_extract(cfg, progress=bar, echo=lambda s: click.echo(s, err=True), placement=placement)
    from ..dist import is_main

    if not is_main():  # under torchrun only rank 0 writes the run folder and reports
        return
    info = json.loads((run / "run.json").read_text())
    s = info["stats"]
    rate = f", {s['texts_per_second']} texts/s" if s.get("texts_per_second") else ""
    click.echo(
        f"extracted {len(json.loads((run / 'readout.json').read_text())['concepts'])} concepts from "
        f"{s['n_texts']} texts in {info['seconds']:.0f} s{rate} -> {run}"
    )


def _parse_weights(pairs: tuple[str, ...]) -> dict[str, float]:
    import math

    from ..errors import SteerkitError
    from ..vectors.runinfo import MAX_ALPHA

    out: dict[str, float] = {}
    for p in pairs:
        name, sep, val = p.partition("=")
        try:
            out[name.strip()] = float(val) if sep else 1.0
        except ValueError as e:
            raise SteerkitError(f"--concept {p!r}: use NAME=ALPHA, e.g. calm=4") from e
        if not (math.isfinite(out[name.strip()]) and abs(out[name.strip()]) <= MAX_ALPHA):
            raise SteerkitError(f"--concept {p!r}: ALPHA must be a finite number within +-{MAX_ALPHA:g}, e.g. calm=4")
    if not out:
        raise SteerkitError("give at least one --concept NAME=ALPHA")
    return out


@main.command()
@click.option("--vectors", "vectors_dir", required=True, type=click.Path(), help="A run folder from extract.")
@click.option("--concept", "concepts", multiple=True,
              help="NAME=ALPHA (repeatable), e.g. calm=4 angry=-2; NAME alone: the run's steer-eval operating point.")  # fmt: skip
@click.option("--layer", type=int, default=None, help="Block to steer (default: best_layer, else the middle one).")
@click.option(
    "--layers", "layer_spec", type=BLOCKS, default=None, help="Several blocks at once, e.g. 10,15 (instead of --layer)."
)
@click.option(
    "--mode",
    type=click.Choice(["add", "project_out", "ablate_then_add"]),
    default="add",
    show_default=True,
    help="add: h + alpha v; project_out: remove the concepts' component; ablate_then_add: remove, then add.",
)
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--max-new-tokens", default=60, type=POSITIVE_INT, show_default=True)
@click.option(
    "--scale",
    type=click.Choice(["absolute", "equal", "relative"]),
    default="absolute",
    show_default=True,
    help="absolute: alpha x raw diff-of-means; equal: alpha x the set's median vector norm x unit vector "
    "(every concept pushed as hard); relative: alpha x local hidden norm x unit vector.",
)
@click.option("--compare", is_flag=True, help="Also show the unsteered text (same seed).")
@click.option("--sample/--greedy", default=False, help="Sample (seeded) instead of greedy decoding.")
@click.option("--seed", default=0, type=SEED, show_default=True)
@click.option("--model", "-m", default=None, help="Model spec (default: the one the vectors were made with).")
@device_options
def steer(
    vectors_dir: str,
    concepts: tuple[str, ...],
    layer: int | None,
    layer_spec: BlockSpec | None,
    mode: str,
    prompt: str,
    max_new_tokens: int,
    scale: str,
    compare: bool,
    sample: bool,
    seed: int,
    model: str | None,
    placement: Placement,
) -> None:
    """Generate with concept vectors added to a block's output."""

    from ..errors import SteerkitError
    from ..generation import generate_one
    from ..models import load
    from ..steering import steer as steer_ctx
    from ..vectors import ConceptVectors
    from ..vectors.runinfo import check_model as _check_model
    from ..vectors.runinfo import default_layer as _default_layer
    from ..vectors.runinfo import run_model as _run_model

    if max_new_tokens < 1:
        raise SteerkitError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not prompt.strip():
        raise SteerkitError("the prompt is empty; pass some text with --prompt")
    cv = ConceptVectors.load(vectors_dir)
    weights = _parse_weights(concepts)
    for name in weights:
        cv.index(name)
    from ..experiments.steer_eval.report import operating_points_for

    bare = [p.strip() for p in concepts if "=" not in p]  # no strength: the steer-eval operating point
    ops = operating_points_for(Path(vectors_dir), bare, layer is not None or layer_spec is not None)
    if ops:
        weights.update({n: float(op["alpha"]) for n, op in ops.items()})
        scale = next(iter(ops.values()))["scale"]
        layer = layer if layer is not None or layer_spec is not None else int(next(iter(ops.values()))["layer"])
    if layer is not None and layer_spec is not None:
        raise SteerkitError("give --layer or --layers, not both")
    if layer_spec is not None:
        layers = layer_spec.resolve(int(cv.meta.get("model", {}).get("n_blocks") or max(cv.layers) + 1))
        for la in layers:
            cv.check_layer(la)
    else:
        layers = [cv.check_layer(layer) if layer is not None else _default_layer(Path(vectors_dir), cv.layers)]
    lm = load(model or _run_model(cv, vectors_dir), **placement.load_kwargs())
    _check_model(cv, lm, layers)
    tok = lm.tokenizer
    enc = tok(prompt, return_tensors="pt").to(lm.input_device)
    if enc.input_ids.shape[1] == 0:
        raise SteerkitError(f"the prompt {prompt!r} has no tokens; pass some text with --prompt")

    def generate() -> str:
        return str(
            tok.decode(generate_one(lm, enc, max_new_tokens, sample=sample, seed=seed), skip_special_tokens=True)
        )

    with steer_ctx(lm, cv, weights, layers, scale=scale, mode=mode):  # type: ignore[arg-type]
        steered = generate()
    label = ", ".join(f"{k}={v:g}" for k, v in weights.items())
    where = f"layer {layers[0]}" if len(layers) == 1 else f"layers {','.join(map(str, layers))}"
    if compare:
        click.echo(f"--- unsteered ({where})\n{prompt}{generate()}\n")
    how = scale if mode == "add" else f"{mode}, {scale}"
    click.echo(f"--- steered {label} ({how}, {where})\n{prompt}{steered}")


@main.command()
@click.option("--vectors", "vectors_dir", required=True, type=click.Path(), help="A run folder from extract.")
@click.option("--text", default=None, help="Text to read.")
@click.option("--file", "file_", default=None, type=click.Path(), help="Read the text from a file.")
@click.option("--layer", type=int, default=None, help="Block (default: best_layer, else the middle one).")
@click.option("--top", default=5, type=POSITIVE_INT, show_default=True, help="Concepts to show per token and pooled.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--model", "-m", default=None, help="Model spec (default: the one the vectors were made with).")
@device_options
def read(
    vectors_dir: str, text: str | None, file_: str | None, layer: int | None, top: int, as_json: bool,
    model: str | None, placement: Placement,
) -> None:  # fmt: skip
    """Read each token's hidden state (the run's readout probe, log-probabilities; projections on the
    vectors for a run without one); print the top concepts per token and pooled."""
    from ..errors import SteerkitError
    from ..models import load
    from ..steering import read_tokens
    from ..vectors import ConceptVectors
    from ..vectors.runinfo import check_model as _check_model
    from ..vectors.runinfo import default_layer as _default_layer
    from ..vectors.runinfo import run_model as _run_model

    if (text is None) == (file_ is None):
        raise SteerkitError("give exactly one of --text or --file")
    if top < 1:
        raise SteerkitError(f"--top must be at least 1 (concepts to show), got {top}")
    if file_ is not None:
        p = Path(file_)
        if p.is_dir():
            raise SteerkitError(f"--file {p} is a folder; pass a text file")
        if not p.is_file():
            raise SteerkitError(f"--file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SteerkitError(f"{p}: not UTF-8 (invalid byte at offset {e.start}); re-save it as UTF-8") from e
        except OSError as e:
            raise SteerkitError(f"--file {p} is unreadable ({e.strerror or type(e).__name__})") from e
    assert text is not None
    if not text.strip():
        raise SteerkitError("the text is empty")
    cv = ConceptVectors.load(vectors_dir)
    layer = cv.check_layer(layer) if layer is not None else _default_layer(Path(vectors_dir), cv.layers)
    lm = load(model or _run_model(cv, vectors_dir), **placement.load_kwargs())
    _check_model(cv, lm, layer)
    r = read_tokens(lm, cv, text, layer)
    k = min(top, len(cv.concepts))
    pooled_top = r["pooled"].topk(k)
    per_token = [
        {"token": t, "top": [[cv.concepts[i], round(float(s), 3)] for s, i in zip(*row.topk(k), strict=True)]}
        for t, row in zip(r["tokens"], r["scores"], strict=True)
    ]
    pooled = [[cv.concepts[i], round(float(s), 3)] for s, i in zip(*pooled_top, strict=True)]
    reader = "probe" if layer in cv.probes else "vectors"
    if as_json:
        click.echo(json.dumps({"layer": layer, "reader": reader, "pooled": pooled, "tokens": per_token}, indent=1))
        return
    short = len(per_token) < SHORT_TEXT_TOKENS
    from rich.table import Table

    how = "probe log-probabilities" if reader == "probe" else "projections on the vectors"
    t = Table("token", *[f"#{j + 1}" for j in range(k)], title=f"layer {layer} ({how})")
    for row in per_token:
        t.add_row(repr(row["token"]), *[f"{c} {s:+.2f}" for c, s in row["top"]])
    console().print(t)
    click.echo("pooled: " + ", ".join(f"{c} {s:+.2f}" for c, s in pooled))
    if short:
        click.echo(
            f"note: {len(per_token)} tokens. The reader was fitted on story-length texts and reads a sentence or two "
            "far less reliably than a story (docs/vectors.md, 'On a single short sentence'); prefer a paragraph."
        )
