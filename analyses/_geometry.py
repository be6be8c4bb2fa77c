"""Pure geometry of concept vectors, for emotion_geometry.py (no model, no files; never imported by steerkit).

One path for every feature matrix: `concept_geometry` takes a texts x features matrix (a model block's
pooled activations, TF-IDF or LSA features of the same texts) and the corpus labels, builds the concept
vectors with steerkit's own method registry, runs the PCA over concepts and correlates the PCs with
human ratings. The model rows and the lexical control rows of every table come out of the same code.

Shape letters: C concepts, N texts, F features, B resamples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import stats

from steerkit.vectors.means import as_f32
from steerkit.vectors.methods import METHODS, MethodInputs

Norm = Literal["unit", "raw"]
FIRST_PERSON = frozenset({"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves"})
THIRD_PERSON = frozenset({"he", "him", "his", "himself", "she", "her", "hers", "herself", "they", "them", "their",
                          "theirs", "themselves"})  # fmt: skip


@dataclass(frozen=True)
class Labels:
    """Which texts belong to which concept: names (C,), pos / neg (C, N) bool, scenario (N,) long
    (-1 outside paired scenarios), as steerkit.vectors.extract.membership returns them."""

    names: list[str]
    pos: torch.Tensor
    neg: torch.Tensor
    scenario: torch.Tensor

    def restrict(self, keep: set[str] | list[str]) -> tuple[Labels, np.ndarray]:
        """The corpus without the other concepts: only the concepts in `keep` (order kept) and only the
        texts labelled with one of them or with none (paired baselines). Returns the labels and the
        kept text indices (N',) into the original texts."""
        ci = [i for i, n in enumerate(self.names) if n in keep]
        dropped = [i for i, n in enumerate(self.names) if n not in keep]
        texts = ~self.pos[dropped].any(0) if dropped else torch.ones(self.pos.shape[1], dtype=torch.bool)
        pos = self.pos[ci][:, texts]
        idx = texts.nonzero().flatten().numpy()
        return Labels([self.names[i] for i in ci], pos, ~pos, self.scenario[texts]), idx


def concept_vectors(
    features: np.ndarray | torch.Tensor,
    labels: Labels,
    method: str = "caa",
    norm: Norm = "unit",
    neutral: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """(C, F) concept vectors from a (N, F) texts x features matrix by steerkit's METHODS[method] (the
    same code for model activations and lexical features). 'unit': rows of norm 1 (direction only, so
    a concept's magnitude cannot become a principal axis); 'raw': the method's raw norm kept."""
    if norm not in ("unit", "raw"):
        raise ValueError(f"norm must be 'unit' or 'raw', got {norm!r}")
    x = MethodInputs(as_f32(features), labels.pos, labels.neg, labels.scenario,
                     None if neutral is None else as_f32(neutral))  # fmt: skip
    unit, norms = METHODS[method].fn(x)
    v = unit.double().numpy()  # (C, F)
    return v if norm == "unit" else v * norms.double().numpy()[:, None]


def pca(v: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows of v (C, F), centred over rows: scores (C, k), explained-variance ratios (k,) and
    components (k, F), orthonormal. Each PC's sign is fixed so that its largest |score| is positive."""
    z = v - v.mean(0)
    u, s, vh = np.linalg.svd(z, full_matrices=False)
    k = min(k, len(s))
    signs = np.sign(u[np.abs(u[:, :k]).argmax(0), np.arange(k)])
    signs[signs == 0] = 1.0
    return u[:, :k] * s[:k] * signs, (s[:k] ** 2) / (s**2).sum(), vh[:k] * signs[:, None]


def pearson_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson r of x (n,) with each row of ys (B, n) -> (B,) (NaN where a row is constant)."""
    return pearson_paired(np.broadcast_to(x, ys.shape), ys)


def pearson_paired(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson r of xs[b] with ys[b], row by row: (B, n), (B, n) -> (B,)."""
    xc = xs - xs.mean(1, keepdims=True)
    yc = ys - ys.mean(1, keepdims=True)
    den = np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (xc * yc).sum(1) / den, np.nan)


def draws(n: int, n_perm: int, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resampling indices over n items: bootstrap (n_boot, n) with replacement, permutations (n_perm, n)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, (n_boot, n)), rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)


def correlate(x: np.ndarray, y: np.ndarray, n_perm: int = 2000, n_boot: int = 1000, seed: int = 0,
              resample: tuple[np.ndarray, np.ndarray] | None = None) -> dict:  # fmt: skip
    """Pearson and Spearman r of x and y (n,), a 95% percentile bootstrap CI of Pearson r (pairs
    resampled) and a two-sided permutation p of |r| (x shuffled n_perm times; (1 + hits) / (1 + n_perm)).
    `resample`: precomputed `draws(n, ...)`, to share them between several y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    boot, perm = resample if resample is not None else draws(len(x), n_perm, n_boot, seed)
    r = float(pearson_rows(x, y[None])[0])
    rho = float(stats.spearmanr(x, y)[0]) if np.std(x) > 0 and np.std(y) > 0 else float("nan")
    b = pearson_paired(x[boot], y[boot])
    b = b[np.isfinite(b)]
    lo, hi = np.quantile(b, [0.025, 0.975]) if len(b) else (np.nan, np.nan)
    null = np.abs(pearson_rows(y, x[perm]))
    p = (1 + int((null >= abs(r) - 1e-12).sum())) / (1 + len(perm))
    return {"pearson_r": round(r, 4), "spearman_r": round(rho, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "perm_p": round(p, 5)}  # fmt: skip


def ridge_cv(v: np.ndarray, y: np.ndarray, alphas: np.ndarray | None = None) -> dict:
    """Leave-one-out predictions of y (C,) from the vectors v (C, F) by ridge with an unpenalised intercept,
    the penalty chosen inside each fold by the fold's own exact leave-one-out error over `alphas`
    (default 1e-3..1e3, 13 steps): what sklearn's cross_val_predict(RidgeCV(alphas), cv=LeaveOneOut())
    computes, in closed form through the fold's kernel. R^2 and Pearson r of the held-out predictions.

    Per fold (m = C - 1 concepts, X centred on the fold, K = X X^T = Q diag(lam) Q^T): the hat matrix is
    H = 11^T / m + Q diag(lam / (lam + alpha)) Q^T and the LOO residual is (y_j - yhat_j) / (1 - H_jj)."""
    alphas = np.logspace(-3, 3, 13) if alphas is None else np.asarray(alphas, float)
    n = len(y)
    pred = np.empty(n)
    for i in range(n):
        tr = np.arange(n) != i
        mu, t_mean = v[tr].mean(0), y[tr].mean()
        xc, tc = v[tr] - mu, y[tr] - y[tr].mean()
        lam, q = np.linalg.eigh(xc @ xc.T)  # (m,), (m, m)
        lam = np.clip(lam, 0.0, None)
        qty = q.T @ tc  # (m,)
        shrink = lam[None] / (lam[None] + alphas[:, None])  # (A, m)
        fitted = (shrink * qty[None]) @ q.T  # (A, m)
        hdiag = 1.0 / tr.sum() + shrink @ (q**2).T  # (A, m)
        loo = (tc[None] - fitted) / (1.0 - hdiag)
        a = alphas[int(np.argmin((loo**2).mean(1)))]
        dual = q @ (qty / (lam + a))  # (m,): w = xc^T dual
        pred[i] = t_mean + (xc @ (v[i] - mu)) @ dual
    ss = ((y - y.mean()) ** 2).sum()
    return {
        "r2_cv": round(float(1 - ((y - pred) ** 2).sum() / ss), 4),
        "r_cv": round(float(np.corrcoef(pred, y)[0, 1]), 4),
    }


def geometry(v: np.ndarray, targets: dict[str, np.ndarray], k: int = 5, n_perm: int = 2000, n_boot: int = 1000,
             ridge: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:  # fmt: skip
    """PCs of the concept vectors v (C, F) against each target (C,): PC1 and PC2 with CI and permutation p,
    the best of the first k PCs, and the LOO ridge from the whole vectors (None with ridge=False or
    fewer than 5 concepts). Returns (entry, scores (C, k), components (k, F))."""
    scores, evr, comps = pca(v, k)
    entry: dict = {"n_concepts": len(v), "explained_variance_ratio": [round(float(e), 4) for e in evr]}
    for name, y in targets.items():
        e: dict = {f"PC{i + 1}": correlate(scores[:, i], y, n_perm, n_boot, seed=i) for i in range(min(2, len(evr)))}
        rs = np.abs(pearson_rows(y, scores.T))
        best = int(np.nanargmax(rs))
        e["best_pc"] = {"pc": best + 1, "abs_r": round(float(rs[best]), 4)}
        e["ridge"] = ridge_cv(v, y) if ridge and len(v) >= 5 else None
        entry[name] = e
    return entry, scores, comps


def concept_geometry(features: np.ndarray | torch.Tensor, labels: Labels, targets: dict[str, np.ndarray], *,
                     method: str = "caa", norm: Norm = "unit", neutral: np.ndarray | torch.Tensor | None = None,
                     k: int = 5, n_perm: int = 2000, n_boot: int = 1000, ridge: bool = True,
                     ) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The one path from a texts x features matrix (N, F) to the geometry: concept vectors (C, F), their
    PCs and correlations with the targets. Returns (entry, vectors, scores (C, k), components (k, F))."""
    v = concept_vectors(features, labels, method, norm, neutral)
    entry, scores, comps = geometry(v, targets, k, n_perm, n_boot, ridge)
    return entry, v, scores, comps


def story_properties(text: str) -> dict[str, float]:
    """Surface properties of one story: length in words, first- and third-person shares (first- / third-person
    pronouns per word of narration, i.e. outside double quotes) and dialogue share (characters inside double
    quotes)."""
    quoted = re.findall(r'"[^"]*"', text)
    narration = re.findall(r"[a-z]+", re.sub(r'"[^"]*"', " ", text).lower())
    return {
        "n_words": float(len(text.split())),
        "first_person": sum(w in FIRST_PERSON for w in narration) / max(len(narration), 1),
        "third_person": sum(w in THIRD_PERSON for w in narration) / max(len(narration), 1),
        "dialogue": sum(len(q) for q in quoted) / max(len(text), 1),
    }


def projections(features: np.ndarray | torch.Tensor, direction: np.ndarray) -> np.ndarray:
    """Each text's projection (N,) on a unit direction (F,) of feature space, after centring the texts."""
    a = as_f32(features).double().numpy()
    return (a - a.mean(0)) @ direction


def owners(score: np.ndarray, props: dict[str, np.ndarray], n_perm: int = 2000, n_boot: int = 1000) -> list[dict]:
    """Correlation of a score (n,) with each property (n,) (constant properties skipped), strongest
    |r| first: what a PC lines up with. One set of resamples serves every property."""
    resample = draws(len(score), n_perm, n_boot)
    rows = [{"property": name, **correlate(score, p, resample=resample)} for name, p in props.items() if np.std(p) > 0]
    return sorted(rows, key=lambda r: -abs(r["pearson_r"]))


def eta_squared(score: np.ndarray, groups: list[str], n_perm: int = 2000, seed: int = 0) -> dict:
    """Share of the variance of score (n,) between groups (one-way ANOVA eta^2) and its permutation p
    (group labels shuffled)."""
    g = np.unique(np.asarray(groups), return_inverse=True)[1]
    onehot = np.eye(g.max() + 1)[g]  # (n, G)

    def eta(s: np.ndarray) -> np.ndarray:  # s (B, n) -> (B,)
        means = (s @ onehot) / onehot.sum(0)  # (B, G)
        between = ((means - s.mean(1, keepdims=True)) ** 2 * onehot.sum(0)).sum(1)
        return between / ((s - s.mean(1, keepdims=True)) ** 2).sum(1)

    e = float(eta(score[None])[0])
    rng = np.random.default_rng(seed)
    null = eta(rng.permuted(np.tile(score, (n_perm, 1)), axis=1))
    return {"eta2": round(e, 4), "perm_p": round((1 + int((null >= e - 1e-12).sum())) / (1 + n_perm), 5)}


def lexical_features(texts: list[str], neutral: list[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A no-model control: 'tfidf' (sublinear tf, words seen in >= 2 texts, fitted on the labelled texts)
    or 'lsa-K' (truncated SVD of that TF-IDF to K dims). Returns (texts (N, F), neutral (M, F)) float32."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    if kind != "tfidf" and not (kind.startswith("lsa-") and kind[4:].isdigit()):
        raise ValueError(f"lexical kind must be 'tfidf' or 'lsa-K' (K an integer), got {kind!r}")
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2)
    x, xn = vec.fit_transform(texts), vec.transform(neutral)
    if kind == "tfidf":
        return x.toarray().astype(np.float32), xn.toarray().astype(np.float32)
    k = min(int(kind[4:]), x.shape[0] - 1, x.shape[1] - 1)
    svd = TruncatedSVD(k, algorithm="arpack", random_state=0).fit(x)
    return svd.transform(x).astype(np.float32), svd.transform(xn).astype(np.float32)


def rsa(v1: np.ndarray, v2: np.ndarray) -> float:
    """Representational similarity of two sets of vectors for the same C concepts, (C, F1) and (C, F2):
    Spearman r between the upper triangles of their cosine-similarity matrices (Kriegeskorte et al. 2008)."""

    def cos(v: np.ndarray) -> np.ndarray:
        u = v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)
        return (u @ u.T)[np.triu_indices(len(v), 1)]

    return float(stats.spearmanr(cos(v1), cos(v2))[0])


def split_half(features: np.ndarray | torch.Tensor, labels: Labels, targets: dict[str, np.ndarray], method: str = "caa",
               norm: Norm = "unit", neutral: np.ndarray | torch.Tensor | None = None) -> dict:  # fmt: skip
    """Is PC1 a stable axis of the corpus or noise? Concept vectors from two disjoint halves of each concept's
    texts (alternate texts in corpus order; unlabelled texts in both halves), PCA of each: |r| between the
    halves' PC1 scores, the mean cosine of each concept's two half-vectors, and |r| of each half's PC1 with
    each target. Texts carry at most one concept (as in the story corpus)."""
    pos = labels.pos
    rank = ((pos.long().cumsum(1) - 1) * pos).sum(0)  # (N,) index of a text among its concept's texts
    free = ~pos.any(0)
    halves = []
    for parity in (0, 1):
        keep = free | (pos.any(0) & (rank % 2 == parity))
        sub = Labels(labels.names, pos[:, keep], ~pos[:, keep], labels.scenario[keep])
        v = concept_vectors(as_f32(features)[keep], sub, method, norm, neutral)
        halves.append((v, pca(v, 1)[0][:, 0]))
    (va, pa), (vb, pb) = halves
    cos = (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)).clip(1e-12)
    out = {"pc1_halves_abs_r": round(abs(float(pearson_rows(pa, pb[None])[0])), 4),
           "mean_cosine_halves": round(float(cos.mean()), 4)}  # fmt: skip
    for name, y in targets.items():
        out[f"pc1_{name}_abs_r"] = [round(abs(float(pearson_rows(p, y[None])[0])), 4) for p in (pa, pb)]
    return out
