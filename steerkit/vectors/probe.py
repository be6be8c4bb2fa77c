"""Readout probes: a linear reader over all concepts, per layer, apart from the steering vectors
(issue 28). Pure functions of pooled activations. Two kinds, one format (weight, bias, mean, scale):
shrinkage LDA (`fit_lda`, the default: closed form, and the better reader on the shipped corpus) and
multinomial logistic regression (`fit_probe`), described here.

A probe reads a hidden state h (..., H) as log-probabilities over the C concepts:
    z = (h - mean) / scale                          # the corpus standardisation (StandardScaler)
    log p(c | h) = log_softmax(z W^T + b)_c          # W (C, H), b (C,)
W, b minimise scikit-learn's multinomial logistic-regression objective
    C_reg * sum_i w_i CE(y_i, softmax(W z_i + b)) + ||W||^2 / 2      (the bias unpenalised)
(scipy's L-BFGS-B, as sklearn's lbfgs solver, with the loss and gradient computed by torch in
float32 on one thread: several times faster than sklearn here, and tested equal to it), on the labelled texts only (a text with k concepts is k rows of weight 1/k; texts without a
concept, e.g. baselines, are not rows). C_reg is chosen by grouped cross-validation over `PROBE_CS`:
texts of one paired scenario (and identical texts) share a group, so no fold trains on a framing of
the scenario it tests; the score is the held-out mean log-likelihood (a proper scoring rule; ties go to
the smaller C_reg). A concept absent from a training set gets a zero row and bias -inf (never read).

Shapes: a (N, H) pooled activations; pos (C, N) bool membership; groups (N,) long.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch

from ..threads import one_thread

PROBE_KINDS = {"lda": "shrinkage_lda", "logistic": "multinomial_logistic"}  # option name -> stored kind
DEFAULT_PROBE = "lda"  # measured best on SmolLM2-135M (docs/vectors.md), and closed form
PROBE_CS: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)  # C_reg grid, ascending (warm starts run up it)
DEFAULT_C = 0.01  # when too few groups for cross-validation (measured best on SmolLM2-135M: docs/vectors.md)
CV_SPLITS = 3
MAX_ITER = 500
TOL_GRAD = 1e-4  # max |gradient| at which L-BFGS-B stops, as sklearn's default tol; coefficients to ~0.3%
CV_TOL = 1e-3  # looser for the cross-validation fits, which only rank the values of C


@dataclass(frozen=True)
class Probe:
    """One layer's multinomial readout probe (float32 tensors)."""

    weight: torch.Tensor  # (C, H), on standardised inputs
    bias: torch.Tensor  # (C,); -inf for a concept the probe never saw
    mean: torch.Tensor  # (H,)
    scale: torch.Tensor  # (H,), > 0
    c_reg: float  # the logistic probe's C (NaN for LDA)
    cv: dict[str, float] = field(default_factory=dict)  # C_reg -> held-out mean log-likelihood per text
    kind: str = "multinomial_logistic"  # or "shrinkage_lda" (PROBE_KINDS)
    info: dict[str, float] = field(default_factory=dict)  # how it was fitted (LDA: mean shrinkage, rows)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., C): z W^T + b with z the standardised hidden state."""
        z = (hidden.float() - self.mean) / self.scale
        return z @ self.weight.t() + self.bias

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., C) log p(concept | hidden), each row log-sums to 0."""
        return torch.log_softmax(self.logits(hidden), dim=-1)

    def select(self, idx: Sequence[int]) -> Probe:
        """The probe restricted to concepts `idx` (their log-probabilities renormalise over them)."""
        i = list(idx)
        return Probe(self.weight[i].clone(), self.bias[i].clone(), self.mean, self.scale, self.c_reg, dict(self.cv),
                     self.kind, dict(self.info))  # fmt: skip


def standardisation(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mean (H,) and scale (H,) as sklearn's StandardScaler: population std, 1 where it is 0."""
    x = a.double()
    mean = x.mean(0)
    std = x.std(0, correction=0)
    scale = torch.where(std > 1e-12 * max(1.0, float(std.max()) if std.numel() else 1.0), std, torch.ones_like(std))
    return mean.float(), scale.float()


def probe_rows(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training rows from pos (C, N): text index (R,), concept (R,), weight (R,) float64 = 1 / (the
    text's number of concepts), ordered by text, then concept."""
    c_idx, t_idx = pos.nonzero(as_tuple=True)  # (R,), (R,)
    order = torch.argsort(t_idx * pos.shape[0] + c_idx)
    t, c = t_idx[order], c_idx[order]
    k = pos.sum(0).double()  # (N,) concepts per text
    return t, c, 1.0 / k[t]


def story_groups(texts: Sequence[str], scenario: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) group of each text: its paired scenario (scenario >= 0), else its first identical text."""
    first: dict[str, int] = {}
    g = torch.tensor([first.setdefault(t, i) for i, t in enumerate(texts)], dtype=torch.long)
    if scenario is not None:
        s = scenario.long()
        g = torch.where(s >= 0, len(texts) + s, g)
    return g


def _fit(
    z: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    c_reg: float,
    n_concepts: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    tol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit on standardised rows z (R, H) (float32 or float64) with concept y (R,) and row weight w (R,) ->
    weight (C, H), bias (C,) float64: the minimiser of sklearn's multinomial objective (lbfgs; its
    scaling: sum_i w_i CE_i / sum w + ||W||^2 / (2 C_reg sum w), the bias unpenalised). init: a
    previous solution to start from (warm start); tol: the gradient tolerance (default TOL_GRAD).
    Concepts absent from y get a zero row and bias
    -inf (the loss would push their bias to -inf anyway)."""
    present = torch.unique(y)  # sorted
    weight = torch.zeros(n_concepts, z.shape[1], dtype=torch.float64)
    bias = torch.full((n_concepts,), -math.inf, dtype=torch.float64)
    if len(present) == 1:  # one class: it is always the answer
        bias[present] = 0.0
        return weight, bias
    remap = torch.full((n_concepts,), -1, dtype=torch.long)
    remap[present] = torch.arange(len(present))
    target = remap[y]
    k, h = len(present), z.shape[1]
    sw = float(w.sum())
    lam = 1.0 / (c_reg * sw)
    onehot = torch.nn.functional.one_hot(target, k).to(z.dtype)  # (R, k)
    wr = (w / sw).to(z.dtype).unsqueeze(1)  # (R, 1)

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        wb = torch.from_numpy(theta).to(z.dtype)
        W, b = wb[: k * h].view(k, h), wb[k * h :]
        logits = z @ W.t() + b  # (R, k)
        lse = torch.logsumexp(logits, dim=1, keepdim=True)  # (R, 1)
        ce = (wr * (lse - logits) * onehot).sum()
        d = wr * (torch.exp(logits - lse) - onehot)  # (R, k): d loss / d logits
        gW, gb = d.t() @ z + lam * W, d.sum(0)
        loss = float(ce) + 0.5 * lam * float((W * W).sum())
        return loss, torch.cat([gW.reshape(-1), gb]).double().numpy()

    theta0 = np.zeros(k * h + k)
    if init is not None:
        theta0 = torch.cat([init[0][present].reshape(-1), init[1][present]]).double().numpy()
    opt = scipy.optimize.minimize(
        loss_grad, theta0, method="L-BFGS-B", jac=True,
        options={"maxiter": MAX_ITER, "maxls": 50, "gtol": TOL_GRAD if tol is None else tol, "ftol": 64 * np.finfo(float).eps},
    )  # fmt: skip
    theta = torch.from_numpy(opt.x)
    W, b = theta[: k * h].view(k, h), theta[k * h :]
    weight[present], bias[present] = W, b
    return weight, bias


def _loglik(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """Weighted sum of the log-likelihoods of rows (z, y) under (weight, bias), each floored at
    log 1e-6 (a concept the training rows lacked would otherwise count -inf)."""
    lp = torch.log_softmax(z.double() @ weight.t() + bias, dim=1)  # (R, C)
    ll = lp[torch.arange(len(y)), y].clamp(min=math.log(1e-6))
    return float((w * ll).sum())


def ledoit_wolf_shrinkage(x: torch.Tensor) -> float:
    """The Ledoit-Wolf shrinkage (in [0, 1]) of the covariance of rows x (n, H) towards mu I, mu the
    mean variance: sklearn's `ledoit_wolf_shrinkage` (assume_centered=False), computed with the
    (n, n) Gram matrix (||X^T X||_F = ||X X^T||_F), so it costs O(n^2 H), not O(n H^2)."""
    x = x.double() - x.double().mean(0)
    n, p = x.shape
    if p == 1 or n == 0:
        return 0.0
    x2 = x * x
    trace = x2.sum(0) / n  # (H,) the empirical variances
    mu = float(trace.sum()) / p
    beta_ = float((x2.sum(1) ** 2).sum())  # sum of the entries of X2^T X2
    delta_ = float(((x @ x.t()) ** 2).sum()) / n**2  # ||X^T X||_F^2 / n^2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * float(trace.sum()) + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def _class_cov(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """sklearn LDA's per-class covariance with shrinkage="auto" for rows x (n, H): standardise the
    class (its own mean and population std, 1 where 0), Ledoit-Wolf-shrink its empirical covariance
    towards mu I, scale back. Returns the (H, H) float64 covariance and the shrinkage."""
    x = x.double()
    mean, scale = standardisation(x)
    s = (x - mean.double()) / scale.double()  # (n, H)
    gamma = ledoit_wolf_shrinkage(s)
    emp = s.t() @ s / s.shape[0]  # already centred
    mu = float(torch.diagonal(emp).sum()) / s.shape[1]
    cov = (1.0 - gamma) * emp
    cov.diagonal().add_(gamma * mu)
    sc = scale.double()
    return sc.unsqueeze(1) * cov * sc.unsqueeze(0), gamma


def _check_inputs(a: torch.Tensor, pos: torch.Tensor) -> None:
    if pos.shape[1] != a.shape[0]:
        raise ValueError(f"pos must be (C, {a.shape[0]}), got {tuple(pos.shape)}")
    if not pos.any():
        raise ValueError("a probe needs at least one labelled text")


def fit_lda(
    a: torch.Tensor,
    pos: torch.Tensor,
    groups: torch.Tensor | None = None,
    calibrate: bool = True,
    n_splits: int = CV_SPLITS,
) -> Probe:
    """The shrinkage-LDA readout probe of activations a (N, H) with labels pos (C, N), standardised
    on all N texts (labelled or not) like the logistic probe. On the standardised rows z it is sklearn's
    `LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")` fitted on the labelled rows (a text
    with k concepts is a row of each): class means m_c, priors pi_c (row shares), the within-class
    covariance S = sum_c pi_c S_c with each S_c Ledoit-Wolf shrunk (no tuning: the shrinkage is the
    Ledoit-Wolf estimate), W = m S^-1 (least squares), b_c = -m_c . w_c / 2 + log pi_c, so that
    log_softmax(z W^T + b) is LDA's posterior log p(c | h). A concept without rows gets a zero row and
    bias -inf. Closed form: one (H, H) solve per layer.

    LDA's posteriors are far too confident in H dimensions with tens of texts per concept, so with
    `calibrate` W and b are divided by a temperature T (Guo et al., ICML 2017): the T that maximises
    the held-out log-likelihood of the labelled texts over `n_splits` grouped folds (`groups` as for
    the logistic probe; each fold's LDA fitted on the other folds). Dividing by T changes no ranking,
    only how sure the log-probabilities are. T = 1 (uncalibrated) with fewer groups than folds."""
    _check_inputs(a, pos)
    mean, scale = standardisation(a)
    t, y, w = probe_rows(pos.bool())
    z = (a.double()[t] - mean.double()) / scale.double()  # (R, H)
    g = (torch.arange(a.shape[0]) if groups is None else groups.long())[t]
    with one_thread():  # bit-identical whatever the thread count (torchrun ranks equal one process)
        weight, bias, gammas = _lda(z, y, pos.shape[0])
        info: dict[str, float] = {"shrinkage_mean": round(sum(gammas) / len(gammas), 4), "n_rows": int(len(y))}
        if calibrate and len(set(g.tolist())) >= n_splits:
            held = torch.zeros(len(y), pos.shape[0], dtype=torch.float64)  # (R, C) held-out logits
            for test in grouped_splits(g, n_splits):
                wf, bf, _ = _lda(z[~test], y[~test], pos.shape[0])
                held[test] = z[test] @ wf.t() + bf
            temp = _temperature(held, y, w)
            weight, bias = weight / temp, bias / temp
            info |= {"temperature": round(temp, 4)}
    return Probe(weight.float(), bias.float(), mean, scale, math.nan, {}, kind="shrinkage_lda", info=info)


def _lda(z: torch.Tensor, y: torch.Tensor, n_c: int) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """sklearn's lsqr shrinkage LDA on rows z (R, H) float64 with class y (R,): weight (C, H), bias (C,)
    float64 (zero / -inf for classes without rows) and each present class's Ledoit-Wolf shrinkage."""
    present = torch.unique(y)
    weight = torch.zeros(n_c, z.shape[1], dtype=torch.float64)
    bias = torch.full((n_c,), -math.inf, dtype=torch.float64)
    priors = torch.bincount(y)[present].double() / len(y)  # (k,)
    means = torch.zeros(len(present), z.shape[1], dtype=torch.float64)  # (k, H)
    cov = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
    gammas = []
    for i, c in enumerate(present.tolist()):  # each class's rows selected once
        zc = z[y == c]
        means[i] = zc.mean(0)
        s_c, gamma = _class_cov(zc)
        cov += priors[i] * s_c
        gammas.append(gamma)
    coef = torch.linalg.lstsq(cov, means.t(), driver="gelsd").solution.t()  # (k, H)
    weight[present] = coef
    bias[present] = -0.5 * (means * coef).sum(1) + torch.log(priors)
    return weight, bias, gammas


def _temperature(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    """The T in [0.05, 400] maximising sum_i w_i log_softmax(logits_i / T)[y_i] over the rows whose
    class the fold could read (finite logit); 1.0 when no row can be scored."""
    ok = torch.isfinite(logits[torch.arange(len(y)), y])
    if not ok.any():
        return 1.0
    lg, yy, ww = logits[ok], y[ok], w[ok].double()

    def nll(log_t: float) -> float:
        lp = torch.log_softmax(lg / math.exp(log_t), dim=1)[torch.arange(len(yy)), yy]
        return -float((ww * lp).sum())

    r = scipy.optimize.minimize_scalar(nll, bounds=(math.log(0.05), math.log(400.0)), method="bounded",
                                       options={"xatol": 1e-4})  # fmt: skip
    return float(math.exp(r.x))


def grouped_splits(groups: torch.Tensor, n_splits: int) -> list[torch.Tensor]:
    """Test masks (R,) bool of `n_splits` folds over rows, whole groups per fold, deterministic:
    groups in order of first appearance dealt round robin."""
    uniq = list(dict.fromkeys(groups.tolist()))
    fold_of = {g: i % n_splits for i, g in enumerate(uniq)}
    f = torch.tensor([fold_of[g] for g in groups.tolist()], dtype=torch.long)
    return [f == k for k in range(n_splits)]


def probe_kind(probe: str | bool | None) -> str | None:
    """The probe option as a kind name: "lda" / "logistic" (or their stored names), True for the
    default, False or None for no probe; anything else is a ValueError naming the choices."""
    if probe is None or probe is False:
        return None
    if probe is True:
        return DEFAULT_PROBE
    name = next((k for k, v in PROBE_KINDS.items() if probe in (k, v)), None)
    if name is None:
        raise ValueError(f"probe must be one of {', '.join(PROBE_KINDS)} (or None for none), got {probe!r}")
    return name


def fit_readout_probe(
    a: torch.Tensor,
    pos: torch.Tensor,
    groups: torch.Tensor | None = None,
    kind: str = DEFAULT_PROBE,
    calibrate: bool = True,
) -> Probe:
    """The readout probe of activations a (N, H) with labels pos (C, N): `kind` "lda" (fit_lda; its
    temperature by CV over texts grouped by `groups` unless `calibrate` is False, which changes no
    ranking) or "logistic" (fit_probe, C_reg by the same grouped CV); a stored kind name is accepted too."""
    name = probe_kind(kind)
    if name is None:
        raise ValueError("fit_readout_probe needs a probe kind (lda or logistic)")
    return fit_lda(a, pos, groups, calibrate) if name == "lda" else fit_probe(a, pos, groups)


def fit_probe(
    a: torch.Tensor,
    pos: torch.Tensor,
    groups: torch.Tensor | None = None,
    cs: Sequence[float] = PROBE_CS,
    n_splits: int = CV_SPLITS,
) -> Probe:
    """The readout probe of activations a (N, H) with labels pos (C, N): standardise on all N texts
    (labelled or not), choose C_reg by grouped `n_splits`-fold CV over `cs` (warm starts up the
    grid within each fold; skipped when there are fewer groups of labelled texts than splits, or one
    value of C_reg: then cs[0] or DEFAULT_C), then fit all labelled rows at that C_reg."""
    _check_inputs(a, pos)
    n_c = pos.shape[0]
    mean, scale = standardisation(a)
    t, y, w = probe_rows(pos.bool())
    z = (a.float()[t] - mean) / scale  # (R, H) float32: the loss and gradient; L-BFGS-B runs in float64
    g = (torch.arange(a.shape[0]) if groups is None else groups.long())[t]
    with one_thread():
        best, scores, init = _choose_c(z, y, w, g, sorted(float(c) for c in cs), n_splits, n_c)
        weight, bias = _fit(z, y, w, best, n_c, init)
    return Probe(weight.float(), bias.float(), mean, scale, best, scores)


def _choose_c(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, g: torch.Tensor, cs: list[float], n_splits: int, n_c: int
) -> tuple[float, dict[str, float], tuple[torch.Tensor, torch.Tensor] | None]:
    """C_reg with the best grouped-CV held-out log-likelihood, every C_reg's score, and the mean of
    the folds' solutions at that C_reg (where they all saw every concept), to warm-start the final fit."""
    if len(cs) == 1 or len(set(g.tolist())) < n_splits:
        return (cs[0] if len(cs) == 1 else DEFAULT_C), {}, None
    ll = torch.zeros(len(cs), dtype=torch.float64)
    sols: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in cs]
    for test in grouped_splits(g, n_splits):
        init = None
        for i, c in enumerate(cs):  # ascending C: each fit starts from the previous one
            init = _fit(z[~test], y[~test], w[~test], c, n_c, init, tol=CV_TOL)
            ll[i] += _loglik(z[test], y[test], w[test], *init)
            sols[i].append(init)
    ll /= w.sum()
    i = int(torch.argmax(ll))  # the first (smallest C) of equal scores
    start = None
    if all(bool(torch.isfinite(b).all()) for _, b in sols[i]):
        start = (torch.stack([s[0] for s in sols[i]]).mean(0), torch.stack([s[1] for s in sols[i]]).mean(0))
    return cs[i], {f"{c:g}": round(float(v), 4) for c, v in zip(cs, ll, strict=True)}, start
