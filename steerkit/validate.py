"""One validation layer for what steerkit reads: files, their schemas, tensors, path kinds, sizes.

Every loader reads through these helpers, so every bad input becomes one `SteerkitError` line
that names the file (and the line, for text and JSON Lines) and says what to do:

- `read_text` / `read_json` / `read_jsonl`: UTF-8 with the line of the first bad byte, JSON
  errors with line and column, a partial last JSON Lines line (cut by a crash) skipped;
- `check_schema`: a small JSON Schema subset (type, required, properties, additionalProperties,
  items, const, enum, minimum, exclusiveMinimum, minLength, minItems, uniqueItems) in which a
  "number" is always finite; `SCHEMAS` holds those of every JSON file steerkit reads back
  (readout.json, run.json, metrics.jsonl lines, checkpoint meta.json, phase_core.json, a run's
  config.json and texts.json, prompt lines, quality.json's best layer; docs/formats.md);
- `check_finite`: NaN / inf in a tensor read from disk;
- `expect_dir` / `expect_file` / `check_out_dir`: "X is a file, expected a folder", not "does
  not exist";
- limits: `MAX_TEXT_CHARS` for any one text, `MAX_STORY_CHARS` for a corpus story.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SteerkitError

if TYPE_CHECKING:
    import torch

Error = type[SteerkitError]
Schema = dict[str, Any]

MAX_TEXT_CHARS = 1_000_000  # one text (a line, a --- block, a JSON "text"): split anything longer
MAX_STORY_CHARS = 20_000  # one corpus story (stories are paragraphs: 60-200 words)


# ---- path kinds --------------------------------------------------------------------------------
def expect_dir(path: str | Path, what: str, error: Error = SteerkitError, hint: str = "") -> Path:
    """`path` as a Path if it is a folder; else an error saying what it is instead."""
    p = Path(path)
    if p.is_dir():
        return p
    tail = f"; {hint}" if hint else ""
    if p.exists():
        raise error(f"{what} {p} is a file, expected a folder{tail}")
    raise error(f"{what} {p} does not exist{tail}")


def expect_file(path: str | Path, what: str, error: Error = SteerkitError, hint: str = "") -> Path:
    """`path` as a Path if it is a file; else an error saying what it is instead."""
    p = Path(path)
    if p.is_file():
        return p
    tail = f"; {hint}" if hint else ""
    if p.is_dir():
        raise error(f"{what} {p} is a folder, expected a file{tail}")
    raise error(f"{what} {p} does not exist{tail}")


def check_out_dir(path: str | Path, what: str, error: Error = SteerkitError) -> Path:
    """A folder steerkit may create or write into: not a file, and no parent of it is a file."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if q == p and not q.is_dir():
                raise error(f"{what} {p} is a file, expected a folder; choose a folder")
            if not q.is_dir():
                raise error(f"{what} {p} cannot be a folder: its parent {q} is a file; choose another folder")
            break
    return p


# ---- text and JSON -----------------------------------------------------------------------------
def decode_utf8(data: bytes, where: str | Path, error: Error = SteerkitError) -> str:
    """bytes -> str; a non-UTF-8 byte is an error naming the line it is on."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(f"{where}:{line}: not UTF-8 (invalid byte at offset {e.start}); re-save it as UTF-8") from e


def read_text(path: str | Path, what: str = "file", error: Error = SteerkitError) -> str:
    """A UTF-8 text file (the path must be a file)."""
    p = expect_file(path, what, error)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise error(f"{what} {p} is unreadable ({e.strerror or type(e).__name__})") from e
    return decode_utf8(data, p, error)


def _loads(text: str, where: str, error: Error, line: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"{where}:{line if line is not None else e.lineno}"
        raise error(f"{at}: not valid JSON ({e.msg} at column {e.colno})") from e
    except RecursionError as e:
        raise error(f"{where}: JSON nested too deeply to be a steerkit file") from e


def read_json(path: str | Path, what: str = "file", error: Error = SteerkitError, schema: Schema | None = None) -> Any:
    """A JSON file, checked against `schema` when one is given."""
    p = expect_file(path, what, error)
    obj = _loads(read_text(p, what, error), str(p), error)
    if schema is not None:
        check_schema(obj, schema, str(p), error)
    return obj


def read_jsonl(
    path: str | Path,
    what: str = "file",
    error: Error = SteerkitError,
    schema: Schema | None = None,
    *,
    partial_last: bool = True,
) -> list[tuple[int, Any]]:
    """(line number, object) of every non-empty line. partial_last: a last line without its newline
    that does not parse (a write cut by a crash) is skipped; every other bad line is an error."""
    p = expect_file(path, what, error)
    text = read_text(p, what, error)
    lines = text.split("\n")
    out: list[tuple[int, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if partial_last and n == len(lines):  # no newline after it
            try:
                obj = json.loads(line)
            except ValueError:
                continue
        else:
            obj = _loads(line, str(p), error, line=n)
        if schema is not None:
            check_schema(obj, schema, f"{p}:{n}", error)
        out.append((n, obj))
    return out


def check_text_size(text: str, where: str, error: Error = SteerkitError, limit: int = MAX_TEXT_CHARS) -> str:
    if len(text) > limit:
        raise error(
            f"{where}: a text of {len(text):,} characters, over the limit of {limit:,} (docs/formats.md); "
            "split it into shorter texts"
        )
    return text


# ---- tensors -----------------------------------------------------------------------------------
def check_finite(
    t: torch.Tensor, what: str, file: str | Path | None = None, error: Error = SteerkitError, hint: str = ""
) -> torch.Tensor:
    """`t` if every value is finite; else an error naming the tensor, its file and the count."""
    import torch

    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            where = f"{file}: " if file is not None else ""
            tail = f"; {hint}" if hint else ""
            raise error(f"{where}{what} holds {int(bad.sum())} non-finite value(s) (NaN or inf){tail}")
    return t


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# ---- a small JSON Schema subset ----------------------------------------------------------------
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": finite,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_ARTICLE = {"object": "an object", "array": "a list", "integer": "an integer", "number": "a finite number"}


def _show(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _kind(v: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](v):
            return name
    return type(v).__name__


def check_schema(obj: Any, schema: Schema, where: str, error: Error = SteerkitError) -> None:
    """Raise `error` at the first place `obj` breaks `schema` (a JSON Schema subset)."""
    problem = schema_problem(obj, schema)
    if problem is not None:
        raise error(f"{where}: {problem}")


def schema_problem(obj: Any, schema: Schema, at: str = "") -> str | None:
    """The first way `obj` breaks `schema`, in words ('layers[0] must be an integer, got "a"'), or None."""
    name = at or "the top level"
    types = schema.get("type")
    if types is not None:
        tl = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](obj) for t in tl):
            want = " or ".join(_ARTICLE.get(t, f"a {t}") for t in tl)
            return f"{name} must be {want}, got {_kind(obj)} {_show(obj)}"
    if "const" in schema and obj != schema["const"]:
        return f"{name} must be {_show(schema['const'])}, got {_show(obj)}"
    if "enum" in schema and obj not in schema["enum"]:
        return f"{name} must be one of {', '.join(map(_show, schema['enum']))}, got {_show(obj)}"
    if finite(obj):
        if "minimum" in schema and obj < schema["minimum"]:
            return f"{name} must be >= {schema['minimum']}, got {_show(obj)}"
        if "exclusiveMinimum" in schema and obj <= schema["exclusiveMinimum"]:
            return f"{name} must be > {schema['exclusiveMinimum']}, got {_show(obj)}"
    if isinstance(obj, str) and len(obj) < schema.get("minLength", 0):
        return f"{name} must not be empty"
    if isinstance(obj, list):
        if len(obj) < schema.get("minItems", 0):
            return f"{name} must hold at least {schema['minItems']} item(s), got {len(obj)}"
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in obj}) != len(obj):
            return f"{name} must not repeat items"
        if "items" in schema:
            for i, v in enumerate(obj):
                if (p := schema_problem(v, schema["items"], f"{at}[{i}]")) is not None:
                    return p
    if isinstance(obj, dict):
        for key in schema.get("required", []):
            if key not in obj:
                return f"{at + '.' if at else ''}{key} is missing"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, v in obj.items():
            sub = props.get(key, extra)
            here = f"{at}.{key}" if at else str(key)
            if sub is False:
                return f"{here} is not a known key"
            if isinstance(sub, dict) and (p := schema_problem(v, sub, here)) is not None:
                return p
    return None


# ---- the schemas of the files steerkit reads back (docs/formats.md) -----------------------------
_INT0 = {"type": "integer", "minimum": 0}
_STR = {"type": "string", "minLength": 1}

READOUT_SCHEMA: Schema = {
    "title": "readout.json",
    "type": "object",
    "required": ["format_version", "concepts", "layers", "hidden_size"],
    "properties": {
        "format_version": {"type": "integer"},
        "concepts": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _STR},
        "layers": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _INT0},
        "hidden_size": {"type": "integer", "minimum": 1},
        "dtype": {"enum": ["float32", "bf16", "fp16"]},
        "method": {"type": ["string", "null"]},
        "pooling": {"type": "string"},
        "model": {
            "type": "object",
            "properties": {
                "spec": {"type": ["string", "null"]},
                "n_blocks": {"type": ["integer", "null"], "minimum": 1},
            },
        },
        "corpus": {"type": "object"},
    },
}

RUN_SCHEMA: Schema = {
    "title": "run.json",
    "type": "object",
    "required": ["kind", "created"],
    "properties": {"kind": _STR, "created": {"type": "string"}, "created_unix": {"type": "number"}},
}

METRICS_LINE_SCHEMA: Schema = {
    "title": "a metrics.jsonl line",
    "type": "object",
    "required": ["step", "loss"],
    "properties": {"step": {"type": "integer", "minimum": 1}, "loss": {"type": "number"}},
}

CHECKPOINT_META_SCHEMA: Schema = {
    "title": "checkpoints/step-N/meta.json",
    "type": "object",
    "required": ["format", "step", "sha256"],
    "properties": {
        "format": {"type": "integer"},
        "step": {"type": "integer", "minimum": 0},
        "sha256": {"type": "object", "required": ["state.safetensors"], "properties": {"state.safetensors": _STR}},
        "metrics": {"type": "object"},
        "controller": {"type": "object"},
        "rng": {"type": "object", "required": ["python", "numpy"]},
    },
}
CHECKPOINT_RESUME_SCHEMA: Schema = {  # what the training loop needs to resume from a checkpoint
    **CHECKPOINT_META_SCHEMA,
    "required": ["format", "step", "sha256", "metrics", "controller", "rng"],
}

PHASE_SUMMARY_SCHEMA: Schema = {
    "title": "phase_core.json",
    "type": "object",
    "required": ["kind", "sha256", "tensors"],
    "properties": {
        "kind": {"const": "train-phase"},
        "sha256": _STR,
        "tensors": {"type": "array", "items": {"type": "string"}},
        "step": {"type": ["integer", "null"]},
        "finished_unix": {"type": "number"},
    },
}

TRAIN_CONFIG_FILE_SCHEMA: Schema = {
    "title": "config.json of a train-phase run",
    "type": "object",
    "required": ["kind", "config"],
    "properties": {"kind": {"const": "train-phase"}, "config": {"type": "object"}, "resolved": {"type": "object"}},
}

PROMPT_LINE_SCHEMA: Schema = {
    "title": "a prompts .jsonl line",
    "type": "object",
    "required": ["prompt"],
    "properties": {"prompt": _STR, "continuation": {"type": ["string", "null"]}},
}

QUALITY_BEST_LAYER_SCHEMA: Schema = {
    "title": "quality.json (the part steer/read use)",
    "type": "object",
    "properties": {"best_layer": {"type": ["integer", "null"]}},
}

TEXTS_SCHEMA: Schema = {
    "title": "texts.json of an extract run",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["concepts", "sources"],
        "properties": {
            "concepts": {"type": "array", "items": {"type": "string"}},
            "sources": {"type": "array", "items": {"type": "object"}},
        },
    },
}

SCHEMAS: dict[str, Schema] = {
    "texts.json": TEXTS_SCHEMA,
    "readout.json": READOUT_SCHEMA,
    "run.json": RUN_SCHEMA,
    "metrics.jsonl": METRICS_LINE_SCHEMA,
    "checkpoint meta.json": CHECKPOINT_META_SCHEMA,
    "phase_core.json": PHASE_SUMMARY_SCHEMA,
    "train-phase config.json": TRAIN_CONFIG_FILE_SCHEMA,
    "prompts.jsonl": PROMPT_LINE_SCHEMA,
    "quality.json": QUALITY_BEST_LAYER_SCHEMA,
}


def nonfinite_fields(obj: Any, prefix: str = "") -> list[str]:
    """Names of a dataclass's float fields (nested dataclasses and tuples included) that are NaN or inf."""
    from dataclasses import fields, is_dataclass

    bad: list[str] = []
    for f in fields(obj) if is_dataclass(obj) else ():
        v = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if is_dataclass(v):
            bad += nonfinite_fields(v, f"{name}.")
        elif any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, tuple) else (v,))):
            bad.append(name)
    return bad
