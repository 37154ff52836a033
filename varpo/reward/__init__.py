"""The multi-head reward ensemble (docs/design.md §1): model, aggregations, scorer, training, report."""
from .aggregate import (
           AGGREGATIONS,
           aggregate,
           ensemble_stats,
           head_mean,
           head_mean_var,
           head_median,
           head_variance,
)
from .model import EnsembleRewardModel, last_token_index

__all__ = ["AGGREGATIONS", "EnsembleRewardModel", "aggregate", "ensemble_stats", "head_mean", "head_mean_var",
           "head_median", "head_variance", "last_token_index"]
