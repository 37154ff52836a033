"""Fused Triton kernels with chunked PyTorch twins: the hot per-token math of RLHF
(docs/design.md §2 "Kernels"). Same API on CPU and GPU; backend "auto" picks Triton for CUDA tensors and
PyTorch otherwise. Importing this package never imports Triton (see dispatch.py)."""
from .dispatch import BACKENDS, interpreter_enabled, resolve_backend
from .ensemble_stats import EnsembleStats, ensemble_stats, ensemble_stats_torch
from .selective_log_softmax import selective_log_softmax, selective_log_softmax_naive
from .weighted_kl import KL_ESTIMATORS, WeightedKL, weighted_kl, weighted_kl_torch

__all__ = [
    "BACKENDS", "KL_ESTIMATORS", "EnsembleStats", "WeightedKL", "ensemble_stats", "ensemble_stats_torch",
    "interpreter_enabled", "resolve_backend", "selective_log_softmax", "selective_log_softmax_naive",
    "weighted_kl", "weighted_kl_torch",
]
