"""Triton kernel sources of pozfast, installed as ``pozfast.triton_kernels``.

``relu_count`` (fused ReLU + per-channel zero counts) and ``rdm_tiles`` (Pearson RDM tiles with fused
epilogues). Set ``TRITON_INTERPRET=1`` before importing them to run them on CPU tensors.
"""
