"""`steerkit export` (concept vectors -> a llama.cpp control vector) and `steerkit import --gguf`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .app import main
from .common import model_options

if TYPE_CHECKING:
    from ..models.loading import Placement


@main.command("export")
@click.option("--vectors", "vectors_dir", required=True, type=click.Path(), help="A run folder from extract.")
@click.option(
    "--concept", "concepts", multiple=True, help="NAME=ALPHA (repeatable; NAME alone = 1), summed into one direction."
)
@click.option("--layers", default=None, help="Blocks to export, e.g. 14 or 10:20 (default: the run's blocks, minus 0).")
@click.option("--format", "fmt", type=click.Choice(["gguf"]), default="gguf", show_default=True, help="Output format.")
@click.option("--out", required=True, type=click.Path(), help="Output file (FILE.gguf).")
def export_cmd(vectors_dir: str, concepts: tuple[str, ...], layers: str | None, fmt: str, out: str) -> None:
    """Write concept vectors as a llama.cpp control vector (`llama-cli --control-vector FILE`).

    direction.N = sum alpha_c * v_c (raw diff-of-means), added by llama.cpp to block N's output at
    every position: at scale 1 it equals `steerkit steer --scale absolute` with the same alphas on
    the same blocks. llama.cpp cannot steer block 0."""
    from ..capture import parse_layers
    from ..errors import ReadoutError
    from ..vectors import ConceptVectors
    from ..vectors.gguf import control_directions, model_hint, write_control_vector
    from ..version import __version__
    from .vectors import _parse_weights

    out_path = Path(out)
    if out_path.is_dir():
        raise ReadoutError(f"--out {out_path} is a folder; pass a file name ending in .gguf")
    if out_path.suffix != ".gguf":
        raise ReadoutError(f"--out {out_path}: a {fmt} control vector needs a file name ending in .gguf")
    cv = ConceptVectors.load(vectors_dir)
    weights = _parse_weights(concepts)
    for name in weights:
        cv.index(name)
    model = cv.meta.get("model", {})
    n_blocks = int(model.get("n_blocks") or max(cv.layers) + 1)
    if layers is None:
        chosen = [la for la in cv.layers if la >= 1]
        if not chosen:
            raise ReadoutError("the run has only block 0, which llama.cpp cannot steer; re-extract with --layers")
        if 0 in cv.layers:
            click.echo("note: block 0 skipped (llama.cpp rejects direction.0)", err=True)
    else:
        chosen = parse_layers(layers, n_blocks)
        missing = [la for la in chosen if la not in cv.layers]
        if missing:
            raise ReadoutError(f"block {missing[0]} is not in the run (it has blocks {cv.layers}); choose from those")
        if 0 in chosen:
            raise ReadoutError("llama.cpp cannot steer block 0 (it rejects direction.0); leave 0 out of --layers")
    directions = control_directions(cv, weights, chosen)
    hint = model_hint(_model_type(model))
    extra = {
        "steerkit.weights": json.dumps(weights),
        "steerkit.scale": "absolute",
        "steerkit.source": str(Path(vectors_dir).resolve()),
        "steerkit.created_by": f"steerkit {__version__}",
    }
    write_control_vector(out_path, directions, hint, extra)
    label = ", ".join(f"{k}={v:g}" for k, v in weights.items())
    click.echo(
        f"exported {label} on blocks {chosen} ({len(chosen)} directions, n_embd {cv.hidden_size}, "
        f"model hint {hint!r}) -> {out_path}; use: llama-cli -m MODEL.gguf --control-vector {out_path}"
    )


def _model_type(model: dict[str, Any]) -> str:
    """The run's HF model_type: from its metadata, else from the model's config (no weights loaded),
    else its adapter family."""
    if model.get("model_type"):
        return str(model["model_type"])
    try:
        from transformers import AutoConfig

        from ..models import zoo
        from ..models.loading import _resolve

        spec = str(model["spec"])
        if spec in zoo.ZOO and not zoo.is_present(spec):
            raise LookupError(spec)  # never fetch a model just for a hint
        source, where, gguf_file = _resolve(spec)
        if source != "hub":
            return str(AutoConfig.from_pretrained(where, gguf_file=gguf_file).model_type)
    except Exception:  # the spec moved or cannot be read offline: the family is a fair hint
        pass
    return str(model.get("family") or "unknown")


@main.command("import")
@model_options
@click.option("--gguf", "gguf_file", required=True, type=click.Path(), help="A llama.cpp / repeng control vector.")
@click.option("--concept", default=None, help="Name of the imported concept (default: the file's stem).")
@click.option("--out", default=None, type=click.Path(), help="Readout folder (default: a new folder under runs/).")
def import_cmd(
    model: str | None, trust_remote_code: bool, placement: Placement, gguf_file: str, concept: str | None,
    out: str | None,
) -> None:  # fmt: skip
    """Turn a llama.cpp / repeng control vector into a readout that `steer` and `read` accept.

    The readout has one concept whose raw vector at block N is direction.N: `steerkit steer
    --concept NAME=1 --scale absolute` on those blocks adds what llama.cpp adds at scale 1."""
    from ..errors import ReadoutError
    from ..models import load
    from ..models.zoo import DEFAULT_MODEL
    from ..runs import finish_run, new_run_dir, prepare_out
    from ..vectors.extract import DEFAULT_POOLING
    from ..vectors.gguf import model_hint, read_control_vector, to_readout
    from ..version import __version__

    cvec = read_control_vector(gguf_file)  # all file checks before any model is loaded
    name = concept if concept is not None else re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(gguf_file).stem) or "imported"
    if not name.strip():
        raise ReadoutError("--concept is empty; give the imported concept a name")
    spec = model or DEFAULT_MODEL
    out_dir = prepare_out(Path(out), "import", create=False) if out else new_run_dir("import", name)
    lm = load(spec, **placement.load_kwargs(), trust_remote_code=trust_remote_code)
    info = {k: lm.info[k] for k in ("spec", "family", "fingerprint", "model_type")}
    hidden = int(lm.model.get_input_embeddings().weight.shape[1])
    info |= {"n_blocks": lm.adapter.n_blocks(lm.model), "hidden_size": hidden}
    cv = to_readout(
        cvec,
        name,
        info,
        source=gguf_file,
        pooling=str(getattr(DEFAULT_POOLING, "name", DEFAULT_POOLING)),
        created_by=f"steerkit {__version__}",
    )
    if cvec.model_hint and cvec.model_hint != model_hint(info["model_type"]):
        click.echo(
            f"note: the file's model hint is {cvec.model_hint!r}; model {spec} is {info['model_type']!r}", err=True
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    cv.save(out_dir)
    finish_run(out_dir, "import", source=str(Path(gguf_file).resolve()), model=spec, concept=name, layers=cv.layers)
    click.echo(
        f"imported {Path(gguf_file).name} as concept {name!r} on blocks {cv.layers} for {spec} -> {out_dir}; "
        f"steer as llama.cpp would: steerkit steer --vectors {out_dir} --concept {name}=1 "
        f"--layers {','.join(map(str, cv.layers))}"
    )
