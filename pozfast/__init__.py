"""pozfast: fast APoZ (average percentage of zeros after ReLU), network trimming and representational
geometry for PyTorch, with native CPU, CUDA and Triton kernels and plain-torch fallbacks."""

from pozfast.apoz import apoz
from pozfast.backends import BackendStatus, backends, use_backend
from pozfast.ops.near_zero import near_zero_counts, relu_near_zero_counts
from pozfast.ops.relu_count import relu_count
from pozfast.geometry import Comparison, InsertionCurve, compare_rdms, insertion_curve, rdm, rdm_similarity
from pozfast.inference import (BootstrapResult, NoiseCeiling, PermutationTest, eval_bootstrap, noise_ceiling,
                               permutation_test)
from pozfast.plotting import plot_rdm
from pozfast.rdm_files import StoredRDMs, load_rdm, save_rdm
from pozfast.report import APoZReport, LayerAPoZ
from pozfast.rsatoolbox_backend import install_rsatoolbox_backend, uninstall_rsatoolbox_backend
from pozfast.tracking import APoZTracker, track_apoz

__all__ = ["APoZReport", "APoZTracker", "BackendStatus", "BootstrapResult", "Comparison", "InsertionCurve", "LayerAPoZ",
           "NoiseCeiling", "PermutationTest", "StoredRDMs", "apoz", "backends", "compare_rdms", "eval_bootstrap",
           "insertion_curve", "install_rsatoolbox_backend", "load_rdm", "near_zero_counts", "noise_ceiling",
           "permutation_test", "plot_rdm", "rdm", "rdm_similarity", "relu_count", "relu_near_zero_counts", "save_rdm",
           "track_apoz", "uninstall_rsatoolbox_backend", "use_backend"]
__version__ = "0.1.0"
