"""pozfast: fast APoZ (average percentage of zeros after ReLU), network trimming and representational
geometry for PyTorch, with native CPU, CUDA and Triton kernels and plain-torch fallbacks."""

from pozfast.backends import BackendStatus, backends, use_backend
from pozfast.ops.relu_count import relu_count

__all__ = ["BackendStatus", "backends", "relu_count", "use_backend"]
__version__ = "0.1.0"
