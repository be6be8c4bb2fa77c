"""Parsing and validating request bodies into generation jobs. Every problem raises ApiError with an
OpenAI-style message naming the field (`param`) and what to do; nothing here touches the model."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from ..steering import MODES, SCALES
from .context import ServeContext


class ApiError(Exception):
    """An HTTP error answered as {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 503: "server_overloaded"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


# ---- JSON helpers ------------------------------------------------------------------------------------
def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise bad(f"the body is not UTF-8 (invalid byte at offset {e.start})", None, "invalid_json") from e
    except ValueError as e:
        raise bad(f"malformed JSON body: {e}", None, "invalid_json") from e
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _type(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise bad(f"'{key}' must be {what}, got {json.dumps(v)[:60]}", key, "invalid_type")
    return v


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = _type(body, key, (int, float), "a number", default)
    v = float(v)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise bad(f"'{key}' must be a finite number in {bound}, got {v:g}", key)
    return v


def _int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int, hint: str = "") -> int | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{key}' must be an integer, got {json.dumps(v)[:60]}", key, "invalid_type")
    if not lo <= v <= hi:
        raise bad(f"'{key}' must be between {lo} and {hi}, got {v}{hint}", key)
    return int(v)


# ---- steering and readout ------------------------------------------------------------------------------
def concept_index(ctx: ServeContext, name: Any, param: str) -> int:
    cv = ctx.vectors
    if not isinstance(name, str):
        raise bad(f"concept names are strings, got {json.dumps(name)[:60]}", param, "invalid_type")
    if name not in cv.concepts:
        close = difflib.get_close_matches(name, cv.concepts, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; GET /v1/concepts lists them"
        raise bad(f"unknown concept {name!r}{hint}", param, "unknown_concept")
    return int(cv.concepts.index(name))


def check_layer(ctx: ServeContext, layer: Any, param: str) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise bad(f"'{param}' must be an integer block index, got {json.dumps(layer)[:60]}", param, "invalid_type")
    if layer not in ctx.vectors.layers:
        raise bad(f"layer {layer} is not in the run; it has layers {list(ctx.vectors.layers)}", param, "unknown_layer")
    return int(layer)


@dataclass(frozen=True)
class SteerSpec:
    """A request's steering by name: {concept: alpha}, blocks, mode and scale (checked against the run)."""

    weights: dict[str, float]
    layers: list[int]
    mode: str
    scale: str

    def edit(self, cv: Any) -> Any:
        """The RowEdit the generation room applies (directions and, for the ablating modes, bases)."""
        from ..generation import RowEdit
        from ..steering import concept_basis, steering_direction

        directions = {la: steering_direction(cv, self.weights, la, self.scale) for la in self.layers}  # type: ignore[arg-type]
        bases = {la: concept_basis(cv, list(self.weights), la) for la in self.layers} if self.mode != "add" else {}
        return RowEdit(directions, self.scale, self.mode, bases)

    def settings(self) -> dict[str, Any]:
        """The same as plain JSON (what the vLLM worker rebuilds the edit from)."""
        return {"concepts": self.weights, "layers": self.layers, "mode": self.mode, "scale": self.scale}


def parse_steer(ctx: ServeContext, spec: Any) -> SteerSpec | None:
    """A SteerSpec from {"concepts": {name: alpha | null}, "layers": [..] | int, "mode", "scale"}, or None
    when there is nothing to steer (absent, or every strength 0 in add mode: exactly no steering). alpha
    null: the concept's steer-eval operating point (its alpha, and its layer and scale when not given), as
    `steerkit steer --concept NAME` does."""
    from ..vectors.runinfo import MAX_ALPHA

    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise bad('\'steer\' must be an object like {"concepts": {"calm": 4}}', "steer", "invalid_type")
    unknown = set(spec) - {"concepts", "layers", "layer", "mode", "scale"}
    if unknown:
        raise bad(f"unknown field steer.{sorted(unknown)[0]}; steer takes concepts, layers, mode, scale", "steer")
    concepts = spec.get("concepts")
    if not isinstance(concepts, dict) or not concepts:
        raise bad("steer.concepts must be a non-empty object {name: strength}", "steer.concepts", "invalid_type")
    weights: dict[str, float] = {}
    ops = []
    for name, alpha in concepts.items():
        concept_index(ctx, name, "steer.concepts")
        if alpha is None:
            op = ctx.operating_points.get(name)
            if op is None:
                raise bad(f"{name!r} has no operating point in this run; give a strength, e.g. {{\"{name}\": 4}}",
                          "steer.concepts")  # fmt: skip
            ops.append(op)
            alpha = op["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise bad(f"steer.concepts[{name!r}] must be a number, got {json.dumps(alpha)[:40]}", "steer.concepts",
                      "invalid_type")  # fmt: skip
        if not math.isfinite(alpha) or abs(alpha) > MAX_ALPHA:
            raise bad(f"steer.concepts[{name!r}] must be a finite number within +-{MAX_ALPHA:g}, got {alpha}",
                      "steer.concepts")  # fmt: skip
        weights[name] = float(alpha)
    mode = spec.get("mode", "add")
    if mode not in MODES:
        raise bad(f"steer.mode must be one of {', '.join(MODES)}, got {json.dumps(mode)[:40]}", "steer.mode")
    scale = spec.get("scale", ops[0]["scale"] if ops else "absolute")
    if scale not in SCALES:
        raise bad(f"steer.scale must be one of {', '.join(SCALES)}, got {json.dumps(scale)[:40]}", "steer.scale")
    layers = spec.get("layers", spec.get("layer"))
    if layers is None:
        layers = [int(ops[0]["layer"])] if ops else [ctx.default_layer]
    elif isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, list) or not layers:
        raise bad("steer.layers must be a block index or a non-empty list of them", "steer.layers", "invalid_type")
    layers = list(dict.fromkeys(check_layer(ctx, la, "steer.layers") for la in layers))
    if mode == "add" and not any(weights.values()):
        return None  # all strengths 0: exactly no steering
    return SteerSpec(weights, layers, mode, scale)


@dataclass(frozen=True)
class ReadoutSpec:
    layer: int
    concepts: list[str]
    idx: list[int]
    prompt: bool
    kind: str = "projection"  # log_prob: the run's readout probe; projection: centred projections

    def header(self) -> dict[str, Any]:
        return {"layer": self.layer, "concepts": self.concepts, "kind": self.kind}


def parse_readout(ctx: ServeContext, spec: Any, param: str = "readout") -> ReadoutSpec | None:
    """{"concepts": "all" | [names], "layer": int, "prompt": bool}; true means all defaults."""
    if spec is None or spec is False:
        return None
    if spec is True:
        spec = {}
    if not isinstance(spec, dict):
        raise bad(f'\'{param}\' must be an object like {{"concepts": "all"}} or true', param, "invalid_type")
    unknown = set(spec) - {"concepts", "layer", "prompt"}
    if unknown:
        raise bad(f"unknown field {param}.{sorted(unknown)[0]}; it takes concepts, layer, prompt", param)
    names = spec.get("concepts", "all")
    cv = ctx.vectors
    if names == "all" or names is None:
        idx = list(range(len(cv.concepts)))
    elif isinstance(names, list) and names:
        idx = [concept_index(ctx, n, f"{param}.concepts") for n in names]
    else:
        raise bad(f"{param}.concepts must be \"all\" or a non-empty list of names", f"{param}.concepts",
                  "invalid_type")  # fmt: skip
    layer = spec.get("layer")
    layer = ctx.default_layer if layer is None else check_layer(ctx, layer, f"{param}.layer")
    prompt = spec.get("prompt", False)
    if not isinstance(prompt, bool):
        raise bad(f"{param}.prompt must be true or false", f"{param}.prompt", "invalid_type")
    return ReadoutSpec(layer, [cv.concepts[i] for i in idx], idx, prompt, ctx.readout_kind(layer))
