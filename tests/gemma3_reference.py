"""Gemma 3 text forward pass written from the architecture, not from transformers' modeling code:
an oracle for what `Gemma3ForCausalLM` computes from the same weights.

The constants are the ones llama.cpp hard-codes for Gemma 3 (its GGUF carries none of them): every
6th layer global (rope base 1e6), the rest sliding-window local (window 512, rope base 1e4), query
scale 1/sqrt(head_dim), RMSNorm eps 1e-6 with gain (1 + w), embeddings times sqrt(hidden), neox-style
rope, GELU (tanh) gated MLP, a norm after each sublayer's output, tied LM head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)


def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """x (heads, T, d): rotate pairs (i, i + d/2) by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d, 2, dtype=x.dtype) / d)  # (d/2,)
    ang = pos[:, None].to(x.dtype) * freq[None]  # (T, d/2)
    cos, sin = ang.cos(), ang.sin()
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def forward(
    w: dict[str, torch.Tensor],
    ids: torch.Tensor,
    *,
    n_heads: int = 4,
    window: int | None = 512,
    pattern: int = 6,
    theta_local: float = 1e4,
    theta_global: float = 1e6,
    eps: float = 1e-6,
    keep_last: int = 8,
    n_layers: int | None = None,
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """ids (T,) -> (logits of the last `keep_last` positions (keep_last, vocab), block outputs
    [(T, hidden)] * n_layers). `w` holds transformers' tensor names; computed in w's dtype.
    window=None lets the local layers see the whole context (to show that a test sees a missing
    window); n_layers stops after that many blocks (logits None)."""
    emb = w["model.embed_tokens.weight"]  # (vocab, hidden)
    hidden = emb.shape[1]
    depth = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("model.layers."))
    T = ids.shape[0]
    pos = torch.arange(T)
    x = emb[ids] * torch.tensor(math.sqrt(hidden), dtype=emb.dtype)  # (T, hidden)
    causal = pos[None, :] <= pos[:, None]  # (query, key)
    local = causal & (pos[:, None] - pos[None, :] < (T if window is None else window))
    outs = []
    for i in range(depth if n_layers is None else n_layers):
        p = f"model.layers.{i}."
        is_local = i % pattern < pattern - 1
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, n_heads, -1).transpose(0, 1)  # (heads, T, d)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, -1, q.shape[-1]).transpose(0, 1)  # (kv, T, d)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, -1, q.shape[-1]).transpose(0, 1)
        q = _rms(q, w[p + "self_attn.q_norm.weight"], eps)
        k = _rms(k, w[p + "self_attn.k_norm.weight"], eps)
        theta = theta_local if is_local else theta_global
        q, k = _rope(q, pos, theta), _rope(k, pos, theta)
        rep = n_heads // k.shape[0]
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])  # (heads, T, T)
        scores = scores.masked_fill(~(local if is_local else causal), float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, -1)  # (T, heads * d)
        o = att @ w[p + "self_attn.o_proj.weight"].T
        x = x + _rms(o, w[p + "post_attention_layernorm.weight"], eps)
        h = _rms(x, w[p + "pre_feedforward_layernorm.weight"], eps)
        gate = F.gelu(h @ w[p + "mlp.gate_proj.weight"].T, approximate="tanh")
        m = (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = x + _rms(m, w[p + "post_feedforward_layernorm.weight"], eps)
        outs.append(x)
    if n_layers is not None:
        return None, outs
    final = _rms(x[-keep_last:], w["model.norm.weight"], eps)
    return final @ emb.T, outs
