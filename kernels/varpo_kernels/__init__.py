"""Fused Triton kernels with chunked PyTorch twins."""
