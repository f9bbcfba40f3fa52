"""Triton kernel sources of pozfast, installed as ``pozfast.triton_kernels``.

Import the modules here only after deciding on ``TRITON_INTERPRET`` (it is read at import time).
No Triton kernel ships in this version; ``pozfast.backends()["triton"]`` says so.
"""
