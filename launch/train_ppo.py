"""PPO under the DeepSpeed launcher, one process per rank:

    deepspeed --num_gpus 8 launch/train_ppo.py --config configs/….yaml --out runs/x
    DS_ACCELERATOR=cpu deepspeed --num_nodes 1 --num_accelerators 2 launch/train_ppo.py \
        --config configs/cpu_zero3_2rank.yaml --out runs/x

Same code path as `varpo train-ppo`; the launcher only provides RANK/WORLD_SIZE/MASTER_*."""
import argparse
import os
import sys

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", default=None, help="YAML config")
    parser.add_argument("--out", "-o", required=True, help="output folder")
    parser.add_argument("--set", "-s", action="append", default=[], dest="overrides", help="KEY=VALUE override")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume the interrupted run in --out although training fields of its config differ")
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
    from varpo.ppo import train_ppo
    from varpo.threads import announce

    announce(cfg.runtime.threads)  # this rank's torch threads, before torch loads (varpo.threads)
    try:
        train_ppo(cfg, args.out, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    except ConfigError as exc:  # a bad path, data or output folder: one line, before any engine started
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
