"""Pure, batched metrics for the concept-vector quality report (issue 6): the vector-level ones.

Each function handles one layer. Inputs may be tensors on any device or numpy arrays; they are
moved to CPU float32 first (`as_f32`), and every result is a CPU tensor. Shape letters:
    C concepts, P positives per concept (padded to the largest count), N texts,
    H hidden size, I MLP intermediate size.
No Python loop runs over concepts, positives or neurons: each metric is a few batched matrix
products, decompositions or solves.

One module per concern: concept.py (1. rank, 2. story agreement: each concept's positives),
neuron.py (3. single-neuron alignment), redundancy.py (4. nearest concepts, 5. redundancy),
geometry.py (8. the concept set's principal components against named variables), common.py (unit
rows, padding, threads). Group means (diff-of-means) live with the vectors (`steerkit.vectors.means`),
the per-head decomposition in `steerkit.quality.heads`, the cross-validated readout in
`steerkit.quality.heldout`.
"""

from ...vectors.means import Array, as_bool, as_f32, diff_of_means, group_means, pos_neg_means
from .common import EPS, Padded, one_thread, pad_groups, unit_rows
from .concept import RankStats, StoryAgreement, rank_null, rank_stats, story_agreement
from .geometry import Correlation, Geometry, concept_geometry
from .neuron import NeuronAlignment, neuron_alignment
from .redundancy import Nearest, Redundancy, cosine_matrix, nearest_concepts, redundancy, top_coefficients

__all__ = [
    "EPS",
    "Array",
    "Correlation",
    "Geometry",
    "Nearest",
    "NeuronAlignment",
    "Padded",
    "RankStats",
    "Redundancy",
    "StoryAgreement",
    "as_bool",
    "as_f32",
    "concept_geometry",
    "cosine_matrix",
    "diff_of_means",
    "group_means",
    "nearest_concepts",
    "neuron_alignment",
    "one_thread",
    "pad_groups",
    "pos_neg_means",
    "rank_null",
    "rank_stats",
    "redundancy",
    "story_agreement",
    "top_coefficients",
    "unit_rows",
]
