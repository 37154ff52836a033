"""Run under torch.distributed.run with 2 ranks: a sequence-classification reward model loaded as
a ZeRO-3 DeepSpeed engine (varpo.scoring's path); each rank scores its half of the texts and
saves them with whether its parameters were partitioned."""
import sys
from pathlib import Path

import torch

from varpo.config import load_config
from varpo.scoring import build_scorer

TEXTS = [("what colour is the sky", "blue"), ("the cat sat on the mat", "good happy day very good"),
         ("a", "sad"), ("dog ran under a log on a night", "bad")]

if __name__ == "__main__":
    path, out = sys.argv[1], Path(sys.argv[2])
    cfg = load_config(None, ["reward.type=sequence_classifier", f"reward.path={path}", "deepspeed.zero_stage=3",
                             "reward.batch_size=2"])
    scorer = build_scorer(cfg)
    rank = torch.distributed.get_rank()
    index = [0, 1] if rank == 0 else [2, 3]
    sc = scorer.score([TEXTS[i][0] for i in index], [TEXTS[i][1] for i in index])
    module = scorer.model.module
    partitioned = all(hasattr(p, "ds_id") for p in module.parameters())
    torch.save({"score": sc.score, "index": torch.tensor(index), "partitioned": partitioned}, out / f"scores{rank}.pt")
