"""User-supplied prompt and preference-pair sets. Owned by varpo/data; extend freely.

Paths may be JSONL / JSON / CSV / TSV / Parquet files or HF dataset folders (save_to_disk)."""
from __future__ import annotations

from pydantic import Field

from .core import Section


class DataConfig(Section):
    prompts_path: str | None = Field(None, description="training prompts file or dataset folder; None: the testbed's prompts")
    eval_prompts_path: str | None = Field(None, description="evaluation prompts; None: the testbed's eval prompts")
    pairs_path: str | None = Field(None, description="preference pairs for reward-model training; None: the testbed's pairs")
    eval_pairs_path: str | None = Field(None, description="held-out preference pairs; None: the testbed's eval pairs")
    prompt_column: str = Field("prompt", min_length=1, description="column holding the prompt (prompt and pair files)")
    chosen_column: str = Field("chosen", min_length=1, description="column holding the preferred response")
    rejected_column: str = Field("rejected", min_length=1, description="column holding the dispreferred response")
    chat_template: bool = Field(
        False, description="wrap each prompt in the policy tokenizer's chat template as one user turn, with the "
        "assistant's generation prompt (as TRL and OpenRLHF do) when the tokenizer has a template; raw text otherwise. "
        "The reward model still sees the raw prompt")
    skip_bad_rows: bool = Field(False, description="skip malformed rows (and report how many) instead of failing")

    def pair_columns(self) -> dict[str, str]:
        """The `columns` mapping for varpo.data.load_pairs."""
        return {"prompt": self.prompt_column, "chosen": self.chosen_column, "rejected": self.rejected_column}
