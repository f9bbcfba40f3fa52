"""Representational geometry at scale: Pearson RDMs computed blockwise, RDM comparison, streaming
comparison without an N x N matrix, and PoZ-ordered feature insertion/removal curves.

Conventions:
- An RDM holds dissimilarities ``d_ij = 1 - pearson(x_i, x_j)`` between the rows (items) of X (N x D).
  Condensed form: the N(N-1)/2 upper-triangle entries in scipy ``squareform`` order.
- Zero-variance rows (an item whose feature vector is constant, up to the rounding of its values in the
  dtype the RDM is computed in) make Pearson undefined. Policy, the same in every function: their pairs
  are NaN in RDMs (a :class:`ZeroVarianceWarning` says how many rows), and comparisons skip them (and NaN
  pairs of given RDMs) and report the number of pairs used.
- Non-finite values: NaN or inf in X (or Y, or poz) is an error (no silent NaN propagation). In a given
  RDM, NaN marks a missing pair (skipped); inf is an error.
- "r2" is the squared Pearson correlation of the two RDMs' upper triangles (not squared Spearman).

Under ``torch.distributed``, :func:`rdm_similarity` and :func:`insertion_curve` split their tiles across
ranks and all-reduce float64 sums; every rank returns the same result.

Where the pieces live: inputs and row statistics in :mod:`pozfast.rows`, RDMs in :mod:`pozfast.rdms`,
comparisons in :mod:`pozfast.comparison`, streaming similarity in :mod:`pozfast.similarity`, curves in
:mod:`pozfast.curves`, and the tile drivers and their kernels in :mod:`pozfast.ops.rdm_tiles`. This module
gathers the public names.
"""

from pozfast.comparison import METHODS, Comparison, compare_rdms
from pozfast.curves import InsertionCurve, insertion_curve
from pozfast.rdms import rdm
from pozfast.rows import ZeroVarianceWarning, as_condensed, condensed_length, n_items
from pozfast.similarity import rdm_similarity

__all__ = ["METHODS", "Comparison", "InsertionCurve", "ZeroVarianceWarning", "as_condensed", "compare_rdms",
           "condensed_length", "insertion_curve", "n_items", "rdm", "rdm_similarity"]
