"""Third-party chatter off by default: every HF model load prints a "Loading weights" bar and, for
the critic and the reward backbone (a causal-LM checkpoint read as a base model), a load report of
the `lm_head` it leaves out; AutoTokenizer on a reward-ensemble folder warns about its model type.
None of it is actionable in varpo's own flows, and it buries the progress bars and tables.

Set VARPO_VERBOSE=1 to see all of it (e.g. when loading a checkpoint of your own). The settings
are environment variables that transformers reads at import, so spawned workers, launcher ranks
and CLI subprocesses inherit them."""
from __future__ import annotations

import os
import sys
import warnings

# peft still calls a transformers property deprecated in 5.x; nothing a varpo user can change
_BENIGN_WARNINGS = ("`is_gradient_checkpointing` is deprecated",)


def quiet_third_party() -> None:
    if os.environ.get("VARPO_VERBOSE", "") not in ("", "0"):
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    filters = [f"ignore:{msg}:FutureWarning" for msg in _BENIGN_WARNINGS]
    for msg in _BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=msg, category=FutureWarning)
    have = [x for x in os.environ.get("PYTHONWARNINGS", "").split(",") if x]
    os.environ["PYTHONWARNINGS"] = ",".join(have + [f for f in filters if f not in have])
    if "transformers" in sys.modules:  # imported before us: its env defaults are already read
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
