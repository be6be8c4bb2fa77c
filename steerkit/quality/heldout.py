"""Held-out readout of CAA concept vectors (quality report, issue 6): k-fold, stratified, seeded.

Shapes: C concepts, N texts, H hidden size. Inputs may live on any device; they are moved to
CPU float32 first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .metrics import Array, as_f32, unit_rows

# --------------------------------------------------------------------------- 7. held-out readout


@dataclass(frozen=True)
class HeldOutReadout:
    """Cross-validated CAA readout. top1 / top3 (C,): share of the concept's held-out texts whose
    concept is the best / among the 3 best scores (NaN for a concept without texts); top1_overall,
    top3_overall: the same over all labelled texts; n_texts (C,); predicted (N,): the best-scoring
    concept of each labelled text when held out, -1 for unlabelled; fold (N,): its fold, -1 for
    unlabelled (always training). Chance is 1 / C (top-1) and 3 / C (top-3)."""

    top1: torch.Tensor
    top3: torch.Tensor
    top1_overall: float
    top3_overall: float
    n_texts: torch.Tensor
    predicted: torch.Tensor
    fold: torch.Tensor


def stratified_folds(labels: Array, k: int, seed: int = 0, groups: Array | None = None) -> torch.Tensor:
    """Fold of each labelled text (N,) long, -1 for label -1. Seeded shuffle, then per label a
    round robin over folds (sizes within a label differ by at most 1; fold sizes overall too).
    groups (N,): texts of one group (a paired scenario: one situation told with several emotions)
    share a fold, so no group is split between training and test; the groups are dealt as the
    texts are, each by the label of its first labelled text. Singleton groups (every text its own
    group) give exactly the folds without groups."""
    lab = torch.as_tensor(labels).detach().to("cpu", torch.long)
    idx = (lab >= 0).nonzero().squeeze(1)
    if groups is None:
        unit, first = idx, idx  # every labelled text is its own unit
    else:
        g = torch.as_tensor(groups).detach().to("cpu", torch.long)
        if g.shape != lab.shape:
            raise ValueError(f"groups must be (N,) = {tuple(lab.shape)}, got {tuple(g.shape)}")
        gl = g[idx]
        seen: dict[int, int] = {}
        for i, gi in zip(idx.tolist(), gl.tolist(), strict=True):
            seen.setdefault(gi, i)  # a group's first labelled text
        first = torch.tensor(list(seen.values()), dtype=torch.long)
        unit = torch.tensor(list(seen), dtype=torch.long)
    if groups is not None and unit.numel() < k:
        raise ValueError(f"k_folds must be at most the number of labelled story groups ({unit.numel()}; a paired "
                         f"scenario is one group), got {k}: use fewer folds")  # fmt: skip
    order = torch.randperm(unit.numel(), generator=torch.Generator().manual_seed(seed))
    order = order[torch.argsort(lab[first[order]], stable=True)]  # grouped by label, shuffled within
    unit_fold = torch.empty(unit.numel(), dtype=torch.long)
    unit_fold[order] = torch.arange(unit.numel()) % k  # consecutive within a label = round robin
    fold = torch.full_like(lab, -1)
    if groups is None:
        fold[idx] = unit_fold
    else:
        of = dict(zip(unit.tolist(), unit_fold.tolist(), strict=True))
        fold[idx] = torch.tensor([of[gi] for gi in gl.tolist()], dtype=torch.long)
    return fold


def held_out_readout(
    acts: Array,
    labels: Array,
    n_concepts: int | None = None,
    k_folds: int = 5,
    seed: int = 0,
    vector_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scorer_fn: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    groups: Array | None = None,
) -> HeldOutReadout:
    """Does the CAA vector read a concept in text it was not built from? acts (N, H); labels (N,)
    long, c in [0, C) or -1 for unlabelled texts (e.g. baselines: a negative of every concept,
    never classified). For each of k stratified, seeded folds: from the training texts (all
    other folds plus the unlabelled), v_c = unit(mean(pos_c) - mean(rest)) for all c at once
    (CAA, as `diff_of_means`, from per-(fold, label) sums); each held-out text x gets scores
    v_c . (x - mean of the training texts) and is read as the argmax. A concept without training positives in a fold (fewer texts than
    folds) cannot be predicted in that fold (score -inf).
    vector_fn: for another vector method, a function of the training mask (N,) bool returning
    (C, H) vectors built from those texts only (rows are unit-normalised here); default CAA.
    scorer_fn: for a readout that is not a projection (the readout probe), a function of the
    training mask (N,) bool returning a reader fitted on those texts only, (n, H) -> (n, C) scores;
    it replaces the vectors (a concept it cannot read scores -inf).
    groups (N,): keep each group's texts in one fold (stratified_folds), e.g. the texts of a paired
    scenario, which share everything but the emotion."""
    a = as_f32(acts)
    lab = torch.as_tensor(labels).detach().to("cpu", torch.long)
    if a.ndim != 2 or lab.shape != (a.shape[0],):
        raise ValueError(f"expected acts (N, H) and labels (N,), got {tuple(a.shape)} and {tuple(lab.shape)}")
    c = int(lab.max()) + 1 if n_concepts is None else n_concepts
    if c < 1 or lab.max() >= c or lab.min() < -1:
        raise ValueError(f"labels must be in [-1, {c}); got range [{int(lab.min())}, {int(lab.max())}]")
    n_lab = int((lab >= 0).sum())
    if not 2 <= k_folds <= n_lab:
        raise ValueError(f"k_folds must be in [2, {n_lab}] (number of labelled texts), got {k_folds}")
    fold = stratified_folds(lab, k_folds, seed, groups)
    # Sums per (fold, label) in one O(N H) pass (labels are exclusive, so no (C, N) product is
    # needed); row k_folds * c + f holds fold f of concept c, the last row the unlabelled texts.
    group = torch.where(lab >= 0, lab * k_folds + fold, c * k_folds)  # (N,)
    sums = torch.zeros(c * k_folds + 1, a.shape[1]).index_add_(0, group, a)  # (C k + 1, H)
    counts = torch.bincount(group, minlength=c * k_folds + 1).to(torch.float32)
    fold_sum, fold_n = sums[:-1].view(c, k_folds, -1), counts[:-1].view(c, k_folds)  # (C, k, H), (C, k)
    class_sum, class_n = fold_sum.sum(1), fold_n.sum(1)  # (C, H), (C,)
    all_sum, all_n = sums.sum(0), counts.sum()  # (H,), ()
    predicted = torch.full_like(lab, -1)
    hit1 = torch.zeros(lab.shape, dtype=torch.bool)
    hit3 = torch.zeros(lab.shape, dtype=torch.bool)
    for f in range(k_folds):  # a loop over folds; everything inside is batched over concepts
        test = fold == f
        pos_sum, pos_n = class_sum - fold_sum[:, f], (class_n - fold_n[:, f]).unsqueeze(1)  # training positives
        tr_sum, tr_n = all_sum - fold_sum[:, f].sum(0), all_n - fold_n[:, f].sum()  # all training texts
        v = unit_rows(pos_sum / pos_n - (tr_sum - pos_sum) / (tr_n - pos_n))  # (C, H); NaN if pos_n == 0
        if vector_fn is not None:  # another vector method, built from the training texts only
            v = unit_rows(as_f32(vector_fn(~test))).masked_fill(pos_n == 0, float("nan"))
        if scorer_fn is not None:  # fitted on the training texts only, then applied to the test fold
            scores = as_f32(scorer_fn(~test)(a[test]))  # (N_test, C)
        else:
            scores = (a[test] - tr_sum / tr_n) @ v.T  # (N_test, C)
        top = torch.topk(scores.nan_to_num(nan=float("-inf")), min(3, c), dim=1).indices
        truth = lab[test].unsqueeze(1)
        predicted[test] = top[:, 0]
        hit1[test] = top[:, 0] == truth[:, 0]
        hit3[test] = (top == truth).any(1)
    labelled = lab >= 0
    n_texts = torch.bincount(lab[labelled], minlength=c)
    per = [torch.bincount(lab[labelled], weights=h[labelled].double(), minlength=c) / n_texts for h in (hit1, hit3)]
    return HeldOutReadout(
        top1=per[0].float(),
        top3=per[1].float(),
        top1_overall=float(hit1[labelled].double().mean()),
        top3_overall=float(hit3[labelled].double().mean()),
        n_texts=n_texts,
        predicted=predicted,
        fold=fold,
    )
