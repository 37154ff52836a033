"""The multi-head reward ensemble (docs/design.md §1): model, aggregations, scorer, training, report."""
from ..masks import last_token_index
from .aggregate import (
           AGGREGATIONS,
           aggregate,
           head_mean,
           head_mean_var,
           head_median,
           head_variance,
)
from .model import EnsembleRewardModel

__all__ = ["AGGREGATIONS", "EnsembleRewardModel", "aggregate", "head_mean", "head_mean_var",
           "head_median", "head_variance", "last_token_index"]
