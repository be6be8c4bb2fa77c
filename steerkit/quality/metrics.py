"""Pure, batched metrics for the concept-vector quality report (issue 6): the vector-level ones.

Each function handles one layer. Inputs may be tensors on any device or numpy arrays; they are
moved to CPU float32 first (`as_f32`), and every result is a CPU tensor. Shape letters:
    C concepts, P positives per concept (padded to the largest count), N texts,
    H hidden size, I MLP intermediate size.
No Python loop runs over concepts, positives or neurons: each metric is a few batched matrix
products, decompositions or solves. The per-head decomposition lives in `steerkit.quality.heads`,
the cross-validated readout in `steerkit.quality.heldout`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

Array = torch.Tensor | np.ndarray
EPS = 1e-12


# --------------------------------------------------------------------------- helpers


def as_f32(x: Array) -> torch.Tensor:
    """Any tensor (any device, any float dtype) or array -> detached CPU float32 tensor."""
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float32)


def as_bool(x: Array) -> torch.Tensor:
    """Any tensor or array -> detached CPU bool tensor."""
    return torch.as_tensor(x).detach().to(device="cpu").bool()


def unit_rows(v: torch.Tensor) -> torch.Tensor:
    """v scaled to unit L2 norm along the last dim; zero rows stay zero, NaN rows stay NaN."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(EPS)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small LAPACK decompositions (C x C, P x P) single-threaded, then restore the thread count.

    Threaded MKL eigh/svd gain nothing at these sizes and collapse when the cores are shared:
    on the 2-core dev machine under load, eigh of a 200 x 200 matrix took 3 s with 2 threads and
    0.01 s with 1 (svd of 200 x 4096: 8.8 s vs 0.2 s). torch.set_num_threads is process-wide.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _check_membership(m: torch.Tensor, n: int, name: str) -> None:
    if m.ndim != 2 or m.shape[1] != n:
        raise ValueError(f"{name} must be (concepts, {n}) bool, got shape {tuple(m.shape)}")


def group_means(acts: Array, membership: Array) -> torch.Tensor:
    """Mean activation of each group: acts (N, *F), membership (C, N) bool -> (C, *F).

    One matrix product: (membership @ acts) / counts. An empty group gives a NaN row.
    """
    a = as_f32(acts)
    m = as_bool(membership)
    _check_membership(m, a.shape[0], "membership")
    sums = m.to(torch.float32) @ a.reshape(a.shape[0], -1)  # (C, F)
    return (sums / m.sum(1, keepdim=True)).reshape(m.shape[0], *a.shape[1:])


def pos_neg_means(acts: Array, positives: Array, negatives: Array | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of each concept's positives and negatives: acts (N, *F), positives (C, N) bool,
    negatives (C, N) bool or None (= the complement of the positives) -> two (C, *F) tensors.
    One (C, N) @ (N, F) product per group (the complement costs none: total - positives).
    An empty group gives a NaN row. Raises ValueError when a text is both a positive and a
    negative of one concept."""
    a = as_f32(acts)
    n = a.shape[0]
    flat = a.reshape(n, -1)  # (N, F)
    pos = as_bool(positives)
    _check_membership(pos, n, "positives")
    pos_sum = pos.to(torch.float32) @ flat  # (C, F)
    n_pos = pos.sum(1, keepdim=True)
    if negatives is None:
        neg_sum = flat.sum(0, keepdim=True) - pos_sum
        n_neg = n - n_pos
    else:
        neg = as_bool(negatives)
        _check_membership(neg, n, "negatives")
        if neg.shape != pos.shape:
            raise ValueError(f"positives {tuple(pos.shape)} and negatives {tuple(neg.shape)} differ in shape")
        if (pos & neg).any():
            raise ValueError("a text is both a positive and a negative of the same concept")
        neg_sum = neg.to(torch.float32) @ flat
        n_neg = neg.sum(1, keepdim=True)
    shape = (pos.shape[0], *a.shape[1:])
    return (pos_sum / n_pos).reshape(shape), (neg_sum / n_neg).reshape(shape)


def diff_of_means(acts: Array, positives: Array, negatives: Array | None = None) -> torch.Tensor:
    """Contrastive activation addition (Rimsky et al. 2024, eq. 1), all concepts at once:
        v_c = mean_{n in pos(c)} a_n - mean_{n in neg(c)} a_n.

    acts (N, *F); positives (C, N) bool; negatives (C, N) bool, or None for the complement of
    the positives (every other text). Returns the raw (not unit) vectors (C, *F); a concept
    with no positives or no negatives gets a NaN row. Raises ValueError when a text is both a
    positive and a negative of one concept.
    """
    pos_mean, neg_mean = pos_neg_means(acts, positives, negatives)
    return pos_mean - neg_mean


@dataclass(frozen=True)
class Padded:
    """Positives gathered per concept. x: (C, P, *F); mask: (C, P) bool, True on real rows;
    index: (C, P) long, the text index of each row, -1 at padding."""

    x: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor


def pad_groups(acts: Array, membership: Array) -> Padded:
    """Gather each concept's positives into a padded batch: acts (N, *F), membership (C, N) bool.

    Rows keep text order; P = the largest group. Padding rows are zero.
    """
    a = as_f32(acts)
    m = as_bool(membership)
    _check_membership(m, a.shape[0], "membership")
    c_idx, n_idx = m.nonzero(as_tuple=True)  # sorted by concept, then text
    counts = m.sum(1)  # (C,)
    p = int(counts.max()) if counts.numel() else 0
    slot = torch.arange(c_idx.numel()) - (torch.cumsum(counts, 0) - counts)[c_idx]
    x = a.new_zeros(m.shape[0], p, *a.shape[1:])
    x[c_idx, slot] = a[n_idx]
    mask = torch.zeros(m.shape[0], p, dtype=torch.bool)
    mask[c_idx, slot] = True
    index = torch.full((m.shape[0], p), -1, dtype=torch.long)
    index[c_idx, slot] = n_idx
    return Padded(x, mask, index)


def _check_padded(x: torch.Tensor, mask: torch.Tensor) -> None:
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x (C, P, H) and mask (C, P), got {tuple(x.shape)} and {tuple(mask.shape)}")


# --------------------------------------------------------------------------- 1. rank


@dataclass(frozen=True)
class RankStats:
    """first_pc_variance_ratio (C,): s1^2 / sum_k s_k^2 (> 0.7 one clean direction, < 0.4 fragmented).
    effective_rank (C,): exp(-sum_k p_k log p_k), p_k = s_k / sum_j s_j (Roy & Vetterli 2007).
    singular_values (C, min(P, H)): descending; entries k >= n_c - 1 are set to exactly 0.
    All NaN for a concept with fewer than 2 positives."""

    first_pc_variance_ratio: torch.Tensor
    effective_rank: torch.Tensor
    singular_values: torch.Tensor


def rank_stats(x: Array, mask: Array) -> RankStats:
    """SVD spectrum of each concept's centred positives. x (C, P, H), mask (C, P) bool.

    Padding rows are zeroed after centring, so they add only zero singular values. The singular
    values are the square roots of the eigenvalues of the smaller Gram matrix (P x P or H x H),
    computed in float64 (one batched `eigvalsh`, ~10x faster than a batched SVD of (P, H)).
    Centred data of n_c points has rank <= n_c - 1, so values beyond that are rounding and set to 0.
    """
    xs, m = as_f32(x), as_bool(mask)
    _check_padded(xs, m)
    w = m.to(torch.float32).unsqueeze(-1)  # (C, P, 1)
    n = m.sum(1)  # (C,)
    mean = (xs * w).sum(1) / n.clamp_min(1).unsqueeze(-1)  # (C, H)
    xc = ((xs - mean.unsqueeze(1)) * w).double()  # (C, P, H)
    gram = xc @ xc.transpose(1, 2) if xc.shape[1] <= xc.shape[2] else xc.transpose(1, 2) @ xc
    with one_thread():
        s = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).sqrt()  # (C, min(P, H)) descending
    s = s * (torch.arange(s.shape[1]) < (n - 1).unsqueeze(1))
    s2 = s.square()
    ratio = s2[:, 0] / s2.sum(1) if s.shape[1] else torch.full((xs.shape[0],), float("nan"))
    p = s / s.sum(1, keepdim=True)
    erank = torch.exp(-torch.xlogy(p, p).sum(1))
    bad = n < 2
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return RankStats(
        first_pc_variance_ratio=torch.where(bad, nan, ratio).float(),
        effective_rank=torch.where(bad, nan, erank).float(),
        singular_values=s.float(),
    )


def rank_null(acts: Array, size: int, n_draws: int = 200, seed: int = 0) -> torch.Tensor:
    """The first-PC variance ratio a concept would get if its `size` positives were any texts:
    ratios of `n_draws` random sets of `size` rows of acts (N, H), drawn without replacement with a
    generator seeded by `seed` (draw d = torch.randperm(N)[:size], in order). -> (n_draws,) fp32.

    Compares a concept's ratio with what diversity alone gives: on whole stories the centred
    positives of any concept spread over several directions, so a fixed 0.4 cut says little."""
    a = as_f32(acts)
    n = a.shape[0]
    if not 2 <= size <= n:
        raise ValueError(f"size must lie in [2, {n}] (the number of texts), got {size}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=g)[:size] for _ in range(n_draws)])  # (D, size)
    return rank_stats(a[idx], torch.ones(n_draws, size, dtype=torch.bool)).first_pc_variance_ratio


# --------------------------------------------------------------------------- 2. story agreement


@dataclass(frozen=True)
class StoryAgreement:
    """cos (C, P): cos(x_i - m_c, d_c) per positive, NaN at padding; mean, min (C,) over real rows;
    lowest (C, k): slots (into P) of the k least aligned positives, most outlying first, -1 where
    a concept has fewer than k positives (map slots to texts with `Padded.index`); lowest_cos (C, k)."""

    cos: torch.Tensor
    mean: torch.Tensor
    min: torch.Tensor
    lowest: torch.Tensor
    lowest_cos: torch.Tensor


def story_agreement(x: Array, mask: Array, directions: Array, neg_means: Array, n_lowest: int = 2) -> StoryAgreement:
    """How well each positive tells the concept's story: cos(x_i - m_c, d_c), where m_c is the
    mean of the concept's negatives (C, H) and d_c its direction (C, H; normalised here).
    x (C, P, H), mask (C, P) bool. A mislabelled story has a low or negative cosine."""
    xs, m = as_f32(x), as_bool(mask)
    _check_padded(xs, m)
    d = unit_rows(as_f32(directions))  # (C, H)
    mu = as_f32(neg_means)  # (C, H)
    if d.shape != mu.shape or d.shape != (xs.shape[0], xs.shape[2]):
        raise ValueError(
            f"directions {tuple(d.shape)} and neg_means {tuple(mu.shape)} must be (C, H) = {xs.shape[::2]}"
        )
    diff = xs - mu.unsqueeze(1)  # (C, P, H)
    cos = (diff @ d.unsqueeze(-1)).squeeze(-1) / diff.norm(dim=-1).clamp_min(EPS)  # (C, P)
    cos = cos.masked_fill(~m, float("nan"))
    n = m.sum(1)
    mean = torch.nansum(cos, 1) / n  # NaN when n == 0
    k = min(n_lowest, xs.shape[1])
    vals, slots = torch.topk(cos.masked_fill(~m, float("inf")), k, dim=1, largest=False)
    missing = torch.isinf(vals)
    lowest_cos = vals.masked_fill(missing, float("nan"))
    minimum = lowest_cos[:, 0] if k else torch.full_like(mean, float("nan"))
    return StoryAgreement(cos, mean, minimum, slots.masked_fill(missing, -1), lowest_cos)


# --------------------------------------------------------------------------- 3. single neuron


@dataclass(frozen=True)
class NeuronAlignment:
    """abs_cos (C,): max_j |cos(d_c, W[:, j])|; neuron (C,) long: that j; cos (C,): its signed cosine."""

    abs_cos: torch.Tensor
    neuron: torch.Tensor
    cos: torch.Tensor


def neuron_alignment(directions: Array, w_down: Array) -> NeuronAlignment:
    """Is the concept one MLP neuron's output direction? directions (C, H); w_down (H, I), column j
    being the residual direction neuron j writes (`Adapter.mlp_down_weight`). One (C, H) @ (H, I)
    product divided by the column norms (no normalised copy of W). Dead (zero) columns give cos 0."""
    d = unit_rows(as_f32(directions))  # (C, H)
    w = as_f32(w_down)
    if w.ndim != 2 or w.shape[0] != d.shape[1]:
        raise ValueError(f"w_down must be (hidden={d.shape[1]}, intermediate), got {tuple(w.shape)}")
    cos = (d @ w) / w.square().sum(0).sqrt().clamp_min(EPS)  # (C, I); faster than w.norm(dim=0)
    best = cos.abs().argmax(1)  # (C,)
    signed = cos.gather(1, best.unsqueeze(1)).squeeze(1)
    return NeuronAlignment(signed.abs(), best, signed)


# --------------------------------------------------------------------------- 4. nearest concepts


@dataclass(frozen=True)
class Nearest:
    """index (C, k): the k other concepts with the highest cosine, best first; cos (C, k)."""

    index: torch.Tensor
    cos: torch.Tensor


def cosine_matrix(directions: Array) -> torch.Tensor:
    """(C, H) -> (C, C) cosines between concept directions."""
    d = unit_rows(as_f32(directions))
    return d @ d.T


def nearest_concepts(directions: Array, k: int = 5) -> Nearest:
    """Top-k neighbours of each concept by cosine of directions (C, H), self excluded; k is capped at C - 1."""
    sim = cosine_matrix(directions).fill_diagonal_(float("-inf"))
    vals, idx = torch.topk(sim, min(k, sim.shape[0] - 1), dim=1)
    return Nearest(idx, vals)


# --------------------------------------------------------------------------- 5. redundancy


@dataclass(frozen=True)
class Redundancy:
    """r2 (C,): R^2 of concept c's fit from the others (as sklearn's r2_score: 1 - SS_res / SS_tot,
    SS_tot about the mean coordinate, also without intercept); coef (C, C): row c = the weights
    of the other concepts in c's fit, diagonal 0; intercept (C,): 0 unless fit_intercept."""

    r2: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor


def redundancy(directions: Array, lam: float = 0.01, fit_intercept: bool = False) -> Redundancy:
    """Ridge regression of each concept vector on all the other ones, all concepts in one solve.

    Samples are the H coordinates, features the other C - 1 (unit-normalised) directions; the
    objective is sklearn's Ridge(alpha=lam): ||y - X b - b0||^2 + lam ||b||^2, b0 unpenalised and
    used only when fit_intercept (then X and y are centred over the coordinates, as sklearn does).
    Default: no intercept, because directions have no meaningful offset.
    With G the (C, C) Gram matrix of the (centred) directions and Q = (G + lam I)^-1, block
    inversion gives every leave-one-out solution at once: b_c[j] = -Q[c, j] / Q[c, c] for j != c
    (the precision-matrix form of regression on the other variables). Computed in float64.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0 (ridge strength), got {lam}")
    d = unit_rows(as_f32(directions)).double()  # (C, H)
    if d.ndim != 2 or d.shape[0] < 2:
        raise ValueError(f"directions must be (C >= 2, H), got {tuple(d.shape)}")
    mu = d.mean(1, keepdim=True) if fit_intercept else torch.zeros(d.shape[0], 1, dtype=d.dtype)  # (C, 1)
    dc = d - mu
    eye = torch.eye(d.shape[0], dtype=d.dtype)
    gram = dc @ dc.T + lam * eye
    with one_thread():
        q = torch.cholesky_inverse(torch.linalg.cholesky(gram))  # (C, C)
    coef = (-q / q.diagonal().unsqueeze(1)) * (1 - eye)
    resid = dc - coef @ dc  # (C, H)
    ss_res = resid.square().sum(1)
    ss_tot = (d - d.mean(1, keepdim=True)).square().sum(1)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(EPS), (ss_res == 0).double())
    intercept = (mu - coef @ mu).squeeze(1)
    return Redundancy(r2.float(), coef.float(), intercept.float())


def top_coefficients(coef: Array, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest |coefficients| of each row of coef (C, C), signed, self excluded:
    -> (index (C, k), value (C, k)); k is capped at C - 1."""
    c = as_f32(coef)
    mag = c.abs().fill_diagonal_(-1.0)
    _, idx = torch.topk(mag, min(k, c.shape[0] - 1), dim=1)
    return idx, c.gather(1, idx)


# --------------------------------------------------------------------------- 8. geometry


@dataclass(frozen=True)
class Correlation:
    """Correlation of one principal component's scores with one concept variable (n concepts)."""

    pc: int  # 1-based
    variable: str
    n: int
    pearson_r: float
    pearson_p: float
    spearman_r: float
    spearman_p: float


@dataclass(frozen=True)
class Geometry:
    """scores (C, n_components): PC scores of each concept; explained_variance_ratio (n_components,);
    components (n_components, H); correlations: one per (component, variable)."""

    scores: torch.Tensor
    explained_variance_ratio: torch.Tensor
    components: torch.Tensor
    correlations: tuple[Correlation, ...]


def concept_geometry(directions: Array, variables: Mapping[str, Array], n_components: int = 2) -> Geometry:
    """PCA of the unit concept directions (C, H) and how the top components track concept variables
    (e.g. {"valence": (C,), "arousal": (C,)}), by Pearson and Spearman r with p-values (scipy).

    A component's sign is arbitrary (flipping it flips every r of that component). To be
    deterministic we use sklearn's convention (svd_flip on the components: the largest-|.| loading
    of each component is positive), and report signed r. Concepts whose variable is NaN are left
    out of that variable's correlations; with fewer than 3 left, r and p are NaN.
    """
    d = unit_rows(as_f32(directions)).double()
    dc = d - d.mean(0)  # (C, H)
    k = min(n_components, *dc.shape)
    # PCA through the (C, C) Gram matrix: dc dc^T = U S^2 U^T, scores = U S, components = S^-1 U^T dc
    # (an order of magnitude faster than an SVD of (C, H) for C << H).
    gram = dc @ dc.T
    with one_thread():
        ev, u = torch.linalg.eigh(gram)
    ev, u = ev.flip(0).clamp_min(0), u.flip(1)  # descending
    s = ev.sqrt()
    comps = (u[:, :k].T @ dc) / s[:k].clamp_min(EPS).unsqueeze(1)  # (k, H)
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)  # (k,)
    signs[signs == 0] = 1
    scores = (u[:, :k] * s[:k] * signs).float()  # (C, k)
    evr = (ev[:k] / ev.sum()).float()
    out = []
    for name, values in variables.items():  # a handful of variables x components: bookkeeping only
        v = as_f32(values).double().numpy()
        if v.shape != (d.shape[0],):
            raise ValueError(f"variable {name!r} must have shape ({d.shape[0]},), got {v.shape}")
        ok = np.isfinite(v)
        for j in range(k):
            x, y = scores[ok, j].double().numpy(), v[ok]
            if ok.sum() < 3:
                out.append(Correlation(j + 1, name, int(ok.sum()), *(float("nan"),) * 4))
                continue
            pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
            out.append(Correlation(j + 1, name, int(ok.sum()), float(pr[0]), float(pr[1]), float(sr[0]), float(sr[1])))
    return Geometry(scores, evr, (comps * signs.unsqueeze(1)).float(), tuple(out))
