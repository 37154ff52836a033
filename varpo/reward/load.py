"""A saved reward-model folder loaded by the class that wrote it, chosen by its config.json's
`model_type`. A new kind of folder is one line in FOLDER_KINDS."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .deep import DEEP_MODEL_TYPE, DeepEnsembleRewardModel
from .ensemble import CONFIG_NAME
from .model import MODEL_TYPE, EnsembleRewardModel

# config.json's model_type -> the class whose from_pretrained(path, dtype=, load_kw=) loads the folder
FOLDER_KINDS = {
    MODEL_TYPE: EnsembleRewardModel,  # K heads on one backbone (kinds heads and prior)
    DEEP_MODEL_TYPE: DeepEnsembleRewardModel,  # K backbones, one head each
}


def load_reward_model(path: str | Path, *, dtype: torch.dtype = torch.float32, load_kw: dict | None = None):
    """The reward model saved in folder `path`, by the kind its config.json names; a folder of
    no known kind goes to the heads' loader, whose error names what it expected."""
    conf_file = Path(path) / CONFIG_NAME
    kind = json.loads(conf_file.read_text()).get("model_type") if conf_file.exists() else None
    return FOLDER_KINDS.get(kind, EnsembleRewardModel).from_pretrained(path, dtype=dtype, load_kw=load_kw)
