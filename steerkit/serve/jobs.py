"""From an OpenAI-style body (/v1/completions or /v1/chat/completions) to one generation job: the prompt
ids, sampling, budget, stop strings, steering and readout. Unsupported fields are refused by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .context import ServeContext
from .requests import ApiError, ReadoutSpec, SteerSpec, _int, _number, _type, bad, parse_readout, parse_steer

# OpenAI fields we accept only at their neutral value (what a client sends by default).
NEUTRAL = {"n": 1, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0, "echo": False, "logprobs": None,
           "top_logprobs": None, "logit_bias": None, "suffix": None, "parallel_tool_calls": None,
           "tool_choice": None, "tools": None, "response_format": None}  # fmt: skip
IGNORED = {"user", "stream_options", "metadata", "store", "service_tier"}
COMMON = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
          "steer", "readout"}  # fmt: skip
WHY = {"n": "one choice per request (send n requests)", "best_of": "one choice per request",
       "logprobs": "logprobs are not supported (use \"readout\" for per-token concept scores)",
       "top_logprobs": "logprobs are not supported", "echo": "echo is not supported",
       "presence_penalty": "penalties are not supported", "frequency_penalty": "penalties are not supported",
       "logit_bias": "logit_bias is not supported", "suffix": "suffix is not supported",
       "tools": "tool calls are not supported", "tool_choice": "tool calls are not supported",
       "parallel_tool_calls": "tool calls are not supported", "response_format": "response_format is not supported"}  # fmt: skip


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    steer: SteerSpec | None
    readout: ReadoutSpec | None


def _check_fields(body: dict[str, Any], own: set[str]) -> None:
    for k, v in body.items():
        if k in COMMON or k in own or k in IGNORED:
            continue
        if k in NEUTRAL:
            if v is None or v == NEUTRAL[k] or (k == "logprobs" and v is False):
                continue
            raise bad(f"'{k}' = {json.dumps(v)[:40]} is unsupported: {WHY[k]}", k, "unsupported")
        raise bad(f"unknown field '{k}'; see GET /v1/concepts and docs/serve.md for the fields this server takes", k,
                  "unknown_field")  # fmt: skip


def check_model_name(ctx: ServeContext, body: dict[str, Any]) -> None:
    name = body.get("model")
    if name is None:
        return
    if not isinstance(name, str):
        raise bad("'model' must be a string", "model", "invalid_type")
    if name not in (ctx.model_id, ctx.run.name, "steerkit"):
        raise ApiError(404, f"model {name!r} is not served here; this server serves {ctx.model_id!r} "
                            "(GET /v1/models)", "model", "model_not_found")  # fmt: skip


def completion_prompt(body: dict[str, Any]) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list):
        raise bad("'prompt' must be one string (a list of several prompts or token ids is not supported)", "prompt",
                  "invalid_type")  # fmt: skip
    if not isinstance(p, str):
        raise bad("'prompt' is required and must be a string", "prompt", "invalid_type")
    if not p.strip():
        raise bad("'prompt' is empty; send some text", "prompt", "empty_prompt")
    return p


def chat_prompt(ctx: ServeContext, body: dict[str, Any]) -> str:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' is required: a non-empty list of {role, content}", "messages", "invalid_type")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise bad(f"messages[{i}] must be an object with role system, user or assistant", f"messages[{i}]",
                      "invalid_type")  # fmt: skip
        c = m.get("content")
        if isinstance(c, list):  # [{"type": "text", "text": ...}]
            if not all(isinstance(x, dict) and x.get("type") == "text" and isinstance(x.get("text"), str) for x in c):
                raise bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            c = "".join(x["text"] for x in c)
        if not isinstance(c, str):
            raise bad(f"messages[{i}].content must be a string", f"messages[{i}].content", "invalid_type")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": c})
    if not any(m["content"].strip() for m in clean):
        raise bad("every message is empty; send some text", "messages", "empty_prompt")
    tok = ctx.lm.tokenizer
    if not getattr(tok, "chat_template", None):
        raise bad(f"model {ctx.model_id} has no chat template; use /v1/completions with a plain prompt", "messages",
                  "no_chat_template")  # fmt: skip
    return str(tok.apply_chat_template(clean, tokenize=False, add_generation_prompt=True))


def parse_job(ctx: ServeContext, body: dict[str, Any], chat: bool) -> Job:
    _check_fields(body, {"messages"} if chat else {"prompt"})
    check_model_name(ctx, body)
    tok = ctx.lm.tokenizer
    if chat:
        text = chat_prompt(ctx, body)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
    else:
        ids = list(tok(completion_prompt(body))["input_ids"])
    if not ids:
        raise bad("the prompt tokenises to nothing; send some text", "prompt", "empty_prompt")
    lim = ctx.limits.max_new_tokens
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    default = min(16 if not chat else 256, lim)
    max_tokens = _int(body, key, default, 1, lim, f" (this server's --max-new-tokens-limit is {lim})")
    assert max_tokens is not None
    n_ctx = ctx.context_length
    if n_ctx is not None and len(ids) + max_tokens + 1 > n_ctx:
        raise bad(f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: more than the model's context "
                  f"of {n_ctx}; shorten the prompt or lower max_tokens", "prompt", "context_length_exceeded")  # fmt: skip
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("'stop' must be a non-empty string or a list of them", "stop", "invalid_type")
    if len(stops) > ctx.limits.max_stop:
        raise bad(f"'stop' takes at most {ctx.limits.max_stop} strings, got {len(stops)}", "stop")
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    return Job(
        prompt_ids=ids,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=int(_int(body, "top_k", 0, 0, 1 << 20) or 0),
        seed=_int(body, "seed", None, -(1 << 63), (1 << 63) - 1),
        stop=tuple(stops),
        stream=bool(_type(body, "stream", (bool,), "true or false", False)),
        include_usage=include_usage,
        steer=parse_steer(ctx, body.get("steer")),
        readout=parse_readout(ctx, body.get("readout")),
    )
