"""`steerkit capture`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .app import main
from .common import BLOCKS, POOLING, POSITIVE_INT, SITES, model_options
from .progress import progress_bar

if TYPE_CHECKING:
    from ..capture import BlockSpec, Pooling
    from ..models.loading import Placement


@main.command()
@model_options
@click.option(
    "--texts",
    "texts_path",
    required=True,
    type=click.Path(),
    help="A .txt (--- separated, else one per line) or .jsonl file, or a folder of them.",
)
@click.option(
    "--layers", type=BLOCKS, default="-1", show_default=True, help="e.g. 12 | -1 | 0.5 | 4:10 | all (comma-separated)."
)
@click.option(
    "--site", "sites", type=SITES, default="resid", show_default=True, help="Comma-separated: resid, heads, mlp."
)
@click.option("--pooling", type=POOLING, default="last", show_default=True, help="last | mean | mean_after:N.")
@click.option(
    "--max-batch-tokens",
    default=1024,
    type=POSITIVE_INT,
    show_default=True,
    help="Padded tokens per batch (1024 measured fastest on a 2-core CPU; raise it on a GPU).",
)
@click.option(
    "--max-tokens",
    default=None,
    type=POSITIVE_INT,
    help="Truncate texts to this many tokens (default: the model's context, with a warning when a text is longer).",
)
@click.option(
    "--cache-dir",
    default=None,
    type=click.Path(),
    help="Activation cache (default $STEERKIT_CACHE/activations); 'none' disables.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Output folder.")
@click.option(
    "--backend",
    type=click.Choice(["hooks", "nnsight", "lens"]),
    default="hooks",
    show_default=True,
    help="hooks: plain forward hooks (fastest); nnsight: the same sites through an nnsight trace; "
    "lens: through a transformer-lens TransformerBridge on a copy of the model (pip install 'steerkit[lens]').",
)
@click.option("--no-preflight", is_flag=True, help="Skip the apparatus preflight.")
@click.option("--allow-untrained", is_flag=True, help="Let random models pass the preflight.")
def capture(
    model: str | None,
    trust_remote_code: bool,
    placement: Placement,
    texts_path: str,
    layers: BlockSpec,
    sites: tuple[str, ...],
    pooling: Pooling,
    max_batch_tokens: int,
    max_tokens: int | None,
    cache_dir: str | None,
    out_dir: str,
    backend: str,
    no_preflight: bool,
    allow_untrained: bool,
) -> None:
    """Capture pooled activations of texts into OUT/activations.safetensors + OUT/capture.json."""
    from ..capture import capture as run_capture
    from ..capture import check_max_tokens, depth_label
    from ..errors import SteerkitError
    from ..io import atomic_save_safetensors, atomic_write_bytes
    from ..models import load, preflight
    from ..models.zoo import cache_root
    from ..textio import read_texts

    site_list = sites
    try:
        check_max_tokens(max_tokens)
    except ValueError as e:
        raise SteerkitError(f"--max-tokens: {e}; leave it out to keep whole texts") from e
    from ..validate import check_out_dir

    out = check_out_dir(out_dir, "--out")
    cdir = None if cache_dir == "none" else Path(cache_dir) if cache_dir else cache_root() / "activations"
    if cdir is not None:
        check_out_dir(cdir, "--cache-dir" if cache_dir else "the activation cache ($STEERKIT_CACHE)")
    items = read_texts(texts_path)
    lm = load(model, **placement.load_kwargs(), trust_remote_code=trust_remote_code)
    n = lm.adapter.n_blocks(lm.model)
    layer_list = layers.resolve(n)
    if not no_preflight:
        preflight.check(lm, allow_untrained=allow_untrained)
    for layer in layer_list:
        click.echo(depth_label(layer, n), err=True)
    try:
        with progress_bar("capture") as bar:
            res = run_capture(
                lm,
                [t for t, _ in items],
                layer_list,
                sites=site_list,
                pooling=pooling,
                max_batch_tokens=max_batch_tokens,
                max_tokens=max_tokens,
                cache_dir=cdir,
                progress=bar,
                backend=backend,
                distributed=True,
            )
    except ValueError as e:
        raise SteerkitError(str(e)) from e
    if not res.complete:  # under torchrun only rank 0 writes the output folder
        return
    tensors = {f"{site}.layer_{layer}": v for site in site_list for layer, v in res.site(site).items()}
    atomic_save_safetensors(tensors, out / "activations.safetensors")
    meta = {
        "format_version": 1,
        "model": {k: lm.info[k] for k in ("spec", "family", "fingerprint")},
        "layers": res.layers,
        "sites": list(site_list),
        "pooling": res.pooling,
        "backend": backend,
        "skipped": [{"site": s, "layer": la, "reason": r} for (s, la), r in res.skipped.items()],
        "texts": [{"source": src} for _, src in items],
        "stats": res.stats,
    }
    atomic_write_bytes(out / "capture.json", json.dumps(meta, indent=2).encode())
    s = res.stats
    click.echo(
        f"captured {s['n_texts']} texts ({s['n_computed']} computed, {s['n_cached']} cached) "
        f"in {s['seconds']:.1f} s -> {out}"
    )
