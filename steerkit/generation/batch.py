"""Batched generation with a KV cache: padding, the generation config, generate() over a left-padded
batch (optionally sharing each prompt's prefill across several rows), and the no-cache loop that
recomputes the whole sequence per token (the reference every cached path is checked against)."""

from __future__ import annotations

from typing import Any

import torch


def pad_id(lm: Any) -> int:
    """The id padding uses: the tokenizer's pad token, else EOS, else 0."""
    tok = lm.tokenizer
    eos = tok.eos_token_id
    return int(tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0))


def gen_config(lm: Any, max_new: int) -> Any:
    """A greedy GenerationConfig for max_new tokens; sampling comes from a LogitsProcessor."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new,
        min_new_tokens=0,
        eos_token_id=lm.tokenizer.eos_token_id,
        pad_token_id=pad_id(lm),
    )


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask (b, T_max): the one padder, `capture.forward.pad`."""
    from ..capture.forward import pad as pad_seqs

    return pad_seqs(seqs, pad, "left")


def rows_by_prompt(owners: list[int]) -> list[list[int]]:
    """Row indices grouped by the prompt that owns them, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for r, i in enumerate(owners):
        groups.setdefault(i, []).append(r)
    return list(groups.values())


def cache_kwarg() -> str:
    """generate()'s name for a prefilled KV cache: `cache` from transformers 5.24 on (where
    `past_key_values` warns that it goes in 6.0), `past_key_values` before."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        return "past_key_values"
    return "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"


CACHE_KWARG = cache_kwarg()


def generate_batch(
    lm: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    processor: Any,
    gc: Any,
    hook: Any = None,
    share: int = 1,
    stopping: Any = None,
) -> torch.Tensor:
    """generate() on a left-padded batch of distinct prompts (b, P), each drawn `share` times (rows
    prompt-major); the new tokens (rows, <= G). `processor` (a LogitsProcessor) decides each token;
    `stopping` (a StoppingCriteria returning (rows,) bools) ends rows early. A pre-hook hands each
    call's mask to `hook` (a PhaseHook, or None). With share > 1 the prompts but their last token are run
    once and the cache and the phases copied `share` times."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        am, x = kwargs.get("attention_mask"), kwargs.get("input_ids", args[0] if args else None)
        hook.mask = None if am is None or x is None else am[:, -x.shape[1] :]

    kw: dict[str, Any] = {}
    if stopping is not None:
        kw["stopping_criteria"] = StoppingCriteriaList([stopping])
    handle = lm.model.register_forward_pre_hook(pre, with_kwargs=True) if hook is not None else None
    try:
        with torch.no_grad():
            if share > 1 and ids.shape[1] > 1:
                pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() makes them
                out = lm.model(ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
                cache = out.past_key_values
                cache.batch_repeat_interleave(share)
                if hook is not None:
                    hook.repeat_state(share)
                kw[CACHE_KWARG] = cache
            ids, mask = ids.repeat_interleave(share, 0), mask.repeat_interleave(share, 0)
            out = lm.model.generate(
                ids,
                attention_mask=mask,
                generation_config=gc,
                logits_processor=LogitsProcessorList([processor]),
                **kw,
            )
    finally:
        if handle is not None:
            handle.remove()
            hook.mask = None
    return out[:, ids.shape[1] :].cpu()  # (rows, <= G) new tokens


def generate_one(lm: Any, enc: Any, max_new: int, *, sample: bool = False, seed: int = 0) -> list[int]:
    """The new tokens of one tokenised prompt (`enc`: the tokenizer's output, on the input device): greedy,
    or transformers' own sampling after torch.manual_seed(seed) (what `steerkit steer --sample` does).
    Steering contexts active around the call apply to it."""
    torch.manual_seed(seed)
    with torch.no_grad():
        out = lm.model.generate(**enc, max_new_tokens=max_new, do_sample=sample, pad_token_id=lm.tokenizer.pad_token_id)
    return [int(t) for t in out[0, enc["input_ids"].shape[1] :]]


def generate_recompute(lm: Any, ids: torch.Tensor, processor: Any, gc: Any, stopping: Any = None) -> torch.Tensor:
    """generate()'s greedy loop without a cache (equal-length prompts, no padding): a full forward per
    token. Rows that emitted EOS (or that `stopping` ended) get pad tokens; every row's processor draws at
    every step, as in generate()."""
    x, done = ids, torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    with torch.no_grad():
        for _ in range(gc.max_new_tokens):
            nxt = processor(x, lm.model(x, use_cache=False).logits[:, -1].float()).argmax(-1)  # (rows,)
            nxt = torch.where(done, torch.full_like(nxt, gc.pad_token_id), nxt)
            x = torch.cat([x, nxt[:, None]], 1)
            if gc.eos_token_id is not None:
                done = done | (nxt == gc.eos_token_id)
            if stopping is not None:
                done = done | stopping(x, None).to(done.device)
            if bool(done.all()):
                break
    return x[:, ids.shape[1] :].cpu()


def generate_chunk(
    lm: Any,
    sampler: str,
    prompts: list[list[int]],
    owners: list[int],
    seeds: list[int],
    steer: Any,
    spec: Any,
) -> torch.Tensor:
    """New tokens (rows, spec.max_new) (pad after EOS) for rows r = (prompt owners[r], seed seeds[r]);
    `steer` (a RowSteer attached by the caller, or None) holds one edit per row; spec: a GenSpec.

    sampler 'batched': all rows in one left-padded generate(); 'generate': one call per prompt
    (no padding); 'recompute': per prompt, a full forward per token without a cache."""
    gc = gen_config(lm, spec.max_new)
    dev = lm.input_device
    out = torch.full((len(owners), spec.max_new), gc.pad_token_id, dtype=torch.long)
    groups = [list(range(len(owners)))] if sampler == "batched" else rows_by_prompt(owners)
    for rows in groups:
        if steer is not None:
            steer.rows = rows
        proc = spec.processor([seeds[r] for r in rows])
        if sampler == "recompute":
            ids = torch.tensor([prompts[owners[r]] for r in rows], device=dev)
            new = generate_recompute(lm, ids, proc, gc)
        else:
            ids, mask = left_pad([prompts[owners[r]] for r in rows], pad_id(lm))
            new = generate_batch(lm, ids.to(dev), mask.to(dev), proc, gc)
        out[rows, : new.shape[1]] = new
    if steer is not None:
        steer.rows = None
    return out
