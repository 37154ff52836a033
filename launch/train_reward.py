"""Reward-ensemble training under the DeepSpeed launcher, one process per rank (data parallel:
each rank takes a shard of every batch):

    deepspeed --num_gpus 8 launch/train_reward.py --config configs/….yaml --out runs/rm
    DS_ACCELERATOR=cpu deepspeed --num_nodes 1 --num_accelerators 2 launch/train_reward.py --out runs/rm

Same code path as `varpo train-rm`; the launcher only provides RANK/WORLD_SIZE/MASTER_*."""
import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: the embedded task)")
    parser.add_argument("--out", "-o", required=True, help="output folder")
    parser.add_argument("--set", "-s", action="append", default=[], dest="overrides", help="KEY=VALUE override")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args()
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))

    from varpo.quiet import quiet_third_party

    quiet_third_party()
    from varpo.config import ConfigError, load_config
    from varpo.defaults import config_or_default

    try:
        cfg = load_config(config_or_default(args.config), args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    from varpo.commands.train_rm import run

    run(cfg, Path(args.out))
