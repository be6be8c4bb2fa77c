"""An independent reading of GGUF tensors, to check what transformers' GGUF loader makes of them.

`dequantize` decodes the block formats that the zoo's GGUF files use (F32, F16, Q8_0, Q5_0, Q4_K,
Q6_K), written from ggml's C reference (`dequantize_row_*` in ggml-quants.c, block layouts in
ggml-common.h), not from gguf-py or transformers. `to_hf` applies the two conversions transformers
documents for Gemma 3 GGUFs: llama.cpp stores RMSNorm weights as 1 + w (Gemma's norms multiply by
1 + w, llama.cpp's by w), and ggml's shape (ne0 = row length first) is the transpose of torch's.
"""

from __future__ import annotations

import numpy as np

QK = 32  # Q8_0 / Q5_0 block
QK_K = 256  # K-quant super-block


def _f16(raw: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 little-endian halves -> (n, 1) float32."""
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32)


def q8_0(data: np.ndarray) -> np.ndarray:
    """block_q8_0 {ggml_half d; int8_t qs[32]}: y = d * q."""
    b = data.reshape(-1, 2 + QK)
    d = _f16(b[:, :2])
    q = b[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def q5_0(data: np.ndarray) -> np.ndarray:
    """block_q5_0 {ggml_half d; uint8_t qh[4]; uint8_t qs[16]}: the 5th bit of element j is bit j of qh,
    of element j + 16 bit j + 16; y = d * (q - 16)."""
    b = data.reshape(-1, 2 + 4 + QK // 2)
    d = _f16(b[:, :2])
    qh = np.ascontiguousarray(b[:, 2:6]).view("<u4").astype(np.uint32)  # (n, 1)
    qs = b[:, 6:].astype(np.uint32)  # (n, 16)
    j = np.arange(16, dtype=np.uint32)
    hi0 = ((qh >> j) << 4) & 0x10
    hi1 = (qh >> (j + 12)) & 0x10
    x0 = ((qs & 0x0F) | hi0).astype(np.int32) - 16
    x1 = ((qs >> 4) | hi1).astype(np.int32) - 16
    return (d * np.concatenate([x0, x1], axis=1).astype(np.float32)).reshape(-1)


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7 at once: 6-bit scales and mins packed in 12 bytes."""
    s = scales.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            mn[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def q4_k(data: np.ndarray) -> np.ndarray:
    """block_q4_K {ggml_half d, dmin; uint8_t scales[12]; uint8_t qs[128]}: 8 sub-blocks of 32, each
    y = d * sc * q - dmin * m; sub-blocks 2i and 2i+1 share 32 bytes (low, high nibbles)."""
    b = data.reshape(-1, 4 + 12 + QK_K // 2)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qs = b[:, 16:].reshape(-1, 4, 32)
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)  # sub-block 2i, 2i+1
    y = (d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]
    return y.reshape(-1)


def q6_k(data: np.ndarray) -> np.ndarray:
    """block_q6_K {uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d}: two halves of 128;
    in each, i = 0..31 gives elements i, i+32, i+64, i+96 from ql[i], ql[i+32] and 2-bit pieces of qh[i]."""
    b = data.reshape(-1, 128 + 64 + 16 + 2)
    ql, qh = b[:, :128].astype(np.int32), b[:, 128:192].astype(np.int32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    out = np.empty((b.shape[0], QK_K), np.float32)
    for half in range(2):
        lo, hi, s = ql[:, 64 * half : 64 * half + 64], qh[:, 32 * half : 32 * half + 32], sc[:, 8 * half : 8 * half + 8]
        li = np.arange(32)
        q1 = ((lo[:, li] & 0xF) | (((hi[:, li] >> 0) & 3) << 4)) - 32
        q2 = ((lo[:, li + 32] & 0xF) | (((hi[:, li] >> 2) & 3) << 4)) - 32
        q3 = ((lo[:, li] >> 4) | (((hi[:, li] >> 4) & 3) << 4)) - 32
        q4 = ((lo[:, li + 32] >> 4) | (((hi[:, li] >> 6) & 3) << 4)) - 32
        is_ = li // 16
        base = 128 * half
        for k, q in enumerate((q1, q2, q3, q4)):
            out[:, base + 32 * k + li] = d * s[:, is_ + 2 * k] * q.astype(np.float32)
    return out.reshape(-1)


DECODERS = {"Q8_0": q8_0, "Q5_0": q5_0, "Q4_K": q4_k, "Q6_K": q6_k}


def dequantize(tensor) -> np.ndarray:
    """A gguf.GGUFReader tensor -> float32 array in torch layout (ne[n-1], ..., ne[0])."""
    kind = tensor.tensor_type.name
    shape = tuple(int(n) for n in reversed(tensor.shape))
    raw = np.asarray(tensor.data)
    if kind in ("F32", "F16"):
        return raw.astype(np.float32).reshape(shape)
    if kind not in DECODERS:
        raise NotImplementedError(f"{tensor.name}: no reference decoder for {kind}")
    return DECODERS[kind](raw.view(np.uint8).reshape(-1)).reshape(shape)


def to_hf(name: str, values: np.ndarray) -> np.ndarray:
    """Gemma GGUF -> transformers: norm weights are stored as 1 + w."""
    return values - 1.0 if name.endswith("norm.weight") else values


GEMMA_NAMES = {  # llama.cpp's tensor names -> transformers' (gguf-py tensor_mapping.py, Gemma 2/3 rows)
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gemma_hf_name(name: str) -> str:
    """`blk.3.ffn_down.weight` -> `model.layers.3.mlp.down_proj.weight` (Gemma 3 text)."""
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    _, block, rest = name.split(".", 2)
    stem, _, suffix = rest.rpartition(".")
    return f"model.layers.{block}.{GEMMA_NAMES[stem]}.{suffix}"
