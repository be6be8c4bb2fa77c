"""Resolve a model spec -> (model, tokenizer, adapter, info).

A spec is a zoo alias (`smollm2-135m`), a local Hugging Face directory, a `.gguf` file, or a
hub id (`org/name`, needs the network unless already in the HF cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from . import zoo
from .adapters import Adapter, adapter_for

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer, its adapter and what we learnt loading it.

    info keys: spec, source ('zoo'|'dir'|'gguf'|'hub'), path, family, model_type, n_params,
    missing_keys, unexpected_keys, mismatched_keys, load_seconds, dtype, device, fingerprint.
    """

    model: Any
    tokenizer: Any
    adapter: Adapter
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_device(self) -> Any:
        """The torch.device input ids go to: where the embedding runs (on a sharded or offloaded
        model, the first shard's device)."""
        return self.adapter.input_device(self.model)

    def generate(self, prompt: str, max_new_tokens: int = 40, *, sample: bool = False, seed: int = 0,
                 **kwargs: Any) -> str:  # fmt: skip
        """The continuation of `prompt` (text only, prompt excluded): greedy, or seeded sampling.
        Steering contexts (`steerkit.steer`) active around the call apply to it."""
        import torch

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        enc = self.tokenizer(prompt, return_tensors="pt").to(self.input_device)
        if enc.input_ids.shape[1] == 0:
            raise ValueError(f"the prompt {prompt!r} has no tokens")
        torch.manual_seed(seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=pad,
                                      **kwargs)  # fmt: skip
        return str(self.tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True))


def _resolve(spec: str) -> tuple[str, Path | str, str | None]:
    """(source, location, gguf_file) for a spec, without loading anything."""
    if spec in zoo.ZOO:
        return "zoo", zoo.pull(spec), None
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix == ".gguf":
                return "gguf", p.parent, p.name
            raise ModelLoadError(f"{spec} is a file but not a .gguf; pass a model directory, a .gguf file or a hub id")
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{spec} has no config.json: it is not a Hugging Face model directory")
        return "dir", p, None
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec
    if looks_like_path or not _HUB_ID.match(spec) or spec.count("/") > 1:
        raise ModelLoadError(
            f"model path {spec} does not exist; pass an existing directory, a .gguf file, "
            f"a hub id, or a zoo alias ({', '.join(sorted(zoo.ZOO))})"
        )
    if "/" not in spec:
        raise ModelLoadError(
            f"unknown model {spec!r}: not a zoo alias ({', '.join(sorted(zoo.ZOO))}), not a path, "
            "and hub ids look like org/name"
        )
    return "hub", spec, None


def fingerprint(model: Any, spec: str) -> str:
    """A short stable id of (spec, config, a sample of the weights): changes when weights do."""
    h = hashlib.sha256()
    h.update(spec.encode())
    cfg = model.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation_autoset"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    import torch

    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:  # bf16 weights compute other activations, even from a bf16 checkpoint
        h.update(str(dtype).encode())

    from .offload import tensor_value

    modules = dict(model.named_modules())
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if i % 7 == 0 or name.endswith("embed_tokens.weight"):
                if p.device.type == "meta":  # offloaded (CPU / disk): its hook holds the values
                    owner, _, attr = name.rpartition(".")
                    p = tensor_value(modules[owner], attr)
                flat = p.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 64)][:64].to("cpu", torch.float32)
                h.update(name.encode())
                h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Placement:
    """Where and in which dtype a model is loaded: what `--device`, `--dtype`, `--device-map`,
    `--max-memory` and `--offload-folder` say on every command that loads a model
    (steerkit/cli/common.py: `device_options`; docs/scale.md)."""

    device: str = "cpu"
    dtype: str | None = None  # None: float32
    device_map: str | None = None  # auto | balanced | balanced_low_0 | sequential | FILE.json
    max_memory: str | None = None  # e.g. "0=20GiB,1=20GiB,cpu=60GiB"
    offload_folder: str | None = None  # where disk-offloaded weights go (default: the steerkit cache)

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.device_map is not None and self.device != "cpu":
            raise ValueError("give --device or --device-map, not both (the map places every module)")
        if self.max_memory is not None and self.device_map is None:
            raise ValueError("--max-memory limits what --device-map auto|balanced|sequential plans; give one")

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `load` for this placement."""
        out: dict[str, Any] = {"device": self.device, "dtype": self.dtype}
        if self.device_map is not None:
            out |= {"device_map": self.device_map, "max_memory": self.max_memory}
            out |= {"offload_folder": self.offload_folder}
        return out


def _dtype_probe(device: str, dtype: str) -> None:
    """Run the ops a forward pass needs (matmul, softmax, layer norm) in `dtype` on `device`;
    raises whatever torch raises when the device cannot run that dtype."""
    import torch

    dt = getattr(torch, dtype)
    if str(device).startswith("cuda") and dt is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise RuntimeError("this GPU has no bfloat16 support")
    x = torch.ones(4, 8, dtype=dt, device=device)
    y = torch.softmax(x @ x.t(), dim=-1)
    torch.nn.functional.layer_norm(y, (4,))


def check_dtype(device: str, dtype: str | None) -> None:
    """Raise a one-line ModelLoadError unless `device` can run a forward pass in `dtype`."""
    if dtype is None or dtype == "float32":
        return
    try:
        _dtype_probe(device, dtype)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"device {device!r} cannot run --dtype {dtype} ({reason[:160]}); use --dtype float32 or another device"
        ) from e


def _main_device() -> str:
    """Where an accelerate strategy puts the first modules: the first GPU, else the CPU."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """Raise a one-line ModelLoadError unless torch can put a tensor on `device` (before any loading)."""
    import torch

    try:
        torch.empty(0, device=device)
    except Exception as e:  # RuntimeError for 'foo', AssertionError for cuda on a CPU-only torch, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"device {device!r} is not usable here ({reason[:200]}); use --device cpu") from e


def load(
    spec: str | None = None,
    *,
    dtype: str | None = None,
    device: str = "cpu",
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load `spec` (default: the zoo's default model) in eval mode.

    dtype: 'float32' (default on CPU), 'bfloat16' or 'float16'. device_map: an accelerate strategy
    ('auto', 'balanced', 'balanced_low_0', 'sequential', planned within max_memory, e.g.
    '0=20GiB,cpu=60GiB'), a FILE.json or a dict {module: device} (devices: GPU index, 'cuda:N',
    'mps', 'cpu' = offloaded to CPU RAM, 'disk' = offloaded to offload_folder); it is checked
    against the model's modules before any weight is read. Without it the model is moved to `device`.
    """
    spec = spec or zoo.DEFAULT_MODEL
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    from . import devicemap as dm

    dmap = dm.parse_device_map(device_map) if device_map is not None else None
    mem = dm.parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
    for dev in [device] if dmap is None else dm.map_devices(dmap) or [_main_device()]:
        check_device(dev)
        check_dtype(dev, dtype)
    source, where, gguf_file = _resolve(spec)
    if isinstance(dmap, dict):
        try:
            tree = dm.skeleton(where, gguf_file, trust_remote_code)
        except Exception as e:  # the config itself is unreadable: say so as loading would
            raise ModelLoadError(_explain(spec, source, e)) from e
        dm.check_modules(dmap, tree, spec)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "output_loading_info": True}
    kwargs["dtype"] = getattr(torch, dtype or "float32")
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:  # never unpickle: a pickle can hold code (docs/formats.md)
        kwargs["use_safetensors"] = True
    if dmap is not None:
        kwargs["device_map"] = dmap
        kwargs["offload_folder"] = str(offload_folder or zoo.cache_root() / "offload")
        if mem is not None:
            kwargs["max_memory"] = mem
    try:
        tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
        loaded: Any = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        model, loading_info = loaded
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types; the user needs one line
        if "ignore_mismatched_sizes" in str(e):  # its "see the above report" names no tensor
            raise ModelLoadError(_mismatch(spec, where, kwargs)) from e
        raise ModelLoadError(_explain(spec, source, e, where)) from e
    if device_map is None:
        model = model.to(device)
    model.eval()
    adapter = adapter_for(model)
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "spec": spec,
        "source": source,
        "path": str(where),
        "family": adapter.family,
        "model_type": model.config.model_type,
        "n_params": n_params,
        "missing_keys": sorted(loading_info.get("missing_keys", [])),
        "unexpected_keys": sorted(loading_info.get("unexpected_keys", [])),
        "mismatched_keys": sorted(str(k) for k in loading_info.get("mismatched_keys", [])),
        "load_seconds": round(time.perf_counter() - t0, 2),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "fingerprint": fingerprint(model, spec),
    }
    info["device"] = str(adapter.input_device(model))  # offloaded parameters sit on 'meta'
    info["device_map"] = dict(getattr(model, "hf_device_map", None) or {}) or None
    prepare_tokenizer(tok, info)
    return LoadedModel(model, tok, adapter, info)


def from_model(model: Any, tokenizer: Any, spec: str = "<in-memory>") -> LoadedModel:
    """Wrap an already loaded model (e.g. a tiny random one) without touching its weights."""
    adapter = adapter_for(model)
    info = {
        "spec": spec,
        "source": "memory",
        "path": None,
        "family": adapter.family,
        "model_type": model.config.model_type,
        "n_params": sum(p.numel() for p in model.parameters()),
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "load_seconds": 0.0,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(adapter.input_device(model)),
        "fingerprint": fingerprint(model, spec),
        "device_map": dict(getattr(model, "hf_device_map", None) or {}) or None,
    }
    prepare_tokenizer(tokenizer, info)
    return LoadedModel(model, tokenizer, adapter, info)


def prepare_tokenizer(tok: Any, info: dict[str, Any]) -> None:
    """Make sure a pad token exists (eos, else token 0) and record what was done."""
    note = None
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
            note = f"pad token was missing; set to eos {tok.eos_token!r}"
        else:
            tok.pad_token = tok.convert_ids_to_tokens(0)
            note = "pad token and eos were missing; set pad to token id 0"
    info["pad_token_note"] = note
    info["padding_side"] = tok.padding_side


_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _mismatch(spec: str, where: Path | str, kwargs: dict[str, Any]) -> str:
    """One line naming the tensors whose shapes differ between the checkpoint and its config.json
    (transformers only logs them); they are found by loading once more without the shape check."""
    from transformers import AutoModelForCausalLM

    head = f"the weights of {spec} do not fit its config.json"
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(where, **{**kwargs, "ignore_mismatched_sizes": True})
        bad = sorted(loaded[1].get("mismatched_keys", []), key=str)
    except Exception:
        bad = []
    if not bad:
        return f"{head} (tensor shapes differ); the config and the weights do not belong together"
    name, ckpt, model = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (
        f"{head}: {name} is {list(ckpt)} in the checkpoint but {list(model)} by the config{more}; "
        "the config and the weights do not belong together"
    )


def _pickled(where: Path | str) -> list[str]:
    p = Path(where)
    return sorted(f.name for pat in _PICKLES for f in p.glob(pat)) if p.is_dir() else []


def _explain(spec: str, source: str, e: Exception, where: Path | str = "") -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    pickles = _pickled(where) if source in ("dir", "zoo") else []
    if pickles and ("safetensors" in msg or "weights only" in msg.lower() or "unpickl" in msg.lower()):
        return (
            f"{spec} holds its weights only as a pickle ({', '.join(pickles[:2])}), which can run code: steerkit "
            "loads only safetensors and never unpickles; convert it to safetensors with a tool you trust first"
        )
    if source == "hub" and (
        os.environ.get("HF_HUB_OFFLINE")
        or "offline" in msg.lower()
        or "connect" in msg.lower()
        or "not found" in msg.lower()
        or "couldn't" in msg.lower()
    ):
        return (
            f"could not fetch {spec!r} from the Hugging Face hub (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')}): pass a local directory or a zoo alias "
            f"({', '.join(sorted(zoo.ZOO))}), or unset HF_HUB_OFFLINE and check the network"
        )
    if "safetensors" in msg.lower() or "header" in msg.lower() or "deserializ" in msg.lower():
        return f"could not read the weights of {spec}: {msg[:200]} (is a .safetensors file corrupt or truncated?)"
    return f"could not load {spec}: {type(e).__name__}: {msg[:240]}"
