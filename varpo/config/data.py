"""User-supplied prompt and preference-pair sets. Owned by varpo/data; extend freely.

A path may be a JSONL / JSON / CSV / TSV / Parquet file, a dataset folder (save_to_disk, or data
files datasets.load_dataset reads) or a dataset name (`org/name`, through the HF datasets cache,
so it works offline once cached). Rows may be plain text or conversational (message lists);
see varpo/data/load.py for the formats."""
from __future__ import annotations

from pydantic import Field

from .core import Section

_WHERE = "a JSONL/JSON/CSV/TSV/Parquet file, a dataset folder, or a dataset name (org/name, from the HF cache)"


class DataConfig(Section):
    prompts_path: str | None = Field(None, description=f"training prompts: {_WHERE}; None: the testbed's prompts")
    eval_prompts_path: str | None = Field(
        None, description="held-out prompts (ppo.eval_every, populations); None: the eval_split of prompts_path when "
        "it is a dataset that has one, else the testbed's eval prompts")
    pairs_path: str | None = Field(
        None, description=f"preference pairs for reward-model training: {_WHERE}; rows with prompt/chosen/rejected, "
        "HH-RLHF's chosen/rejected alone (the prompt is their shared start) or conversational message lists; "
        "None: the testbed's pairs")
    eval_pairs_path: str | None = Field(
        None, description="held-out preference pairs; None: the eval_split of pairs_path when it is a dataset that "
        "has one, else the last 10% of pairs_path (seeded shuffle), or the testbed's eval pairs")
    train_split: str = Field("train", min_length=1, description="split read from a dataset with splits (a saved "
                             "DatasetDict, a dataset folder or name) for training; a slice like train[:1000] works "
                             "for dataset names")
    eval_split: str = Field("test", min_length=1, description="split read for held-out prompts and pairs")
    dataset_config: str | None = Field(None, description="configuration (subset) of a dataset loaded by name, e.g. "
                                       "the name of one of its subsets; None: its default")
    prompt_column: str = Field("prompt", min_length=1, description="column holding the prompt (prompt and pair files)")
    chosen_column: str = Field("chosen", min_length=1, description="column holding the preferred response")
    rejected_column: str = Field("rejected", min_length=1, description="column holding the dispreferred response")
    chat_template: bool = Field(
        False, description="wrap each plain-text prompt in the policy tokenizer's chat template as one user turn, "
        "with the assistant's generation prompt (as TRL and OpenRLHF do); refused when the tokenizer has no "
        "template. The reward model still sees the raw prompt. Conversational rows (message lists) always go "
        "through the template, and the reward then sees the rendered prompt")
    skip_bad_rows: bool = Field(False, description="skip malformed rows (and report how many) instead of failing")

    def pair_columns(self) -> dict[str, str]:
        """The `columns` mapping for varpo.data.load_pairs."""
        return {"prompt": self.prompt_column, "chosen": self.chosen_column, "rejected": self.rejected_column}

    def where(self, which: str, explicit: bool) -> dict:
        """`read_records` options for the training (`which`="train") or held-out ("eval") split;
        `explicit`: the path was given for this purpose (a one-split dataset is then read whole)."""
        split = self.train_split if which == "train" else self.eval_split
        return {"split": split, "config": self.dataset_config, "split_field": f"data.{which}_split",
                "single_split_ok": explicit}
