"""One rank of tests/ppo/test_multirank.py::test_zero3_gather_modes_agree, under the `deepspeed`
launcher: for each `generation.zero3_gather` mode in turn, in the same process group, build a
PPO trainer (every role ZeRO-3; the word scorer of tests/ppo/conftest.py), generate this rank's
step-0 rollout through the library's `generate` while watching how many bytes of the actor's
parameters are gathered at once, then run PPO steps. Writes OUT/<mode>/rank<r>.json; the test
compares the modes."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def gathered_bytes(params) -> int:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return sum(p.ds_numel * p.element_size() for p in params if p.ds_status == ZeroParamStatus.AVAILABLE)


def run_mode(out: Path, mode: str, overrides: list[str], steps: int, rank: int) -> dict:
    import torch
    from conftest import WordScorer  # tests/ppo: scores the tiny vocabulary (the gold reward gives it 0)
    from deepspeed.comm import comm as dscomm
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    from varpo.config import load_config
    from varpo.outputs import without_timings
    from varpo.ppo import resolve_sources
    from varpo.ppo.generation.hf import generate
    from varpo.ppo.generation.zero3_gather import GroupedGather
    from varpo.ppo.tokens import tokenize_prompts
    from varpo.ppo.trainer import PPOTrainer
    from varpo.seeds import derive_seed

    cfg = load_config(None, [*overrides, f"generation.zero3_gather={mode}"])
    policy_path, prompts, _, _ = resolve_sources(cfg)
    trainer = PPOTrainer.from_config(cfg, out / mode, prompts=prompts, policy_path=policy_path, scorer=WordScorer())
    actor = trainer.actor.module
    params = list(actor.parameters())
    peak = [0]

    def watch(*_):
        peak[0] = max(peak[0], gathered_bytes(params))

    hooks = [h for m in actor.modules() for h in (m.register_forward_pre_hook(watch), m.register_forward_hook(watch))]
    torch.manual_seed(derive_seed("sampling", cfg.seed, 0, rank))  # as the trainer's rollout of step 0
    ids, mask, _ = tokenize_prompts(trainer.tokenizer, trainer.experience.batch_prompts(0), cfg.generation.max_prompt_len,
                                    trainer.device)
    ro = generate(trainer.actor.engine, trainer.tokenizer, ids, mask, cfg.generation)
    for h in hooks:
        h.remove()
    still_gathered = [p.ds_id for p in params if p.ds_status != ZeroParamStatus.NOT_AVAILABLE]
    # ranks that stop at different lengths (rank 0 after one token): each must keep stepping until
    # all are done, or one is left waiting in a collective that the other never joins. DeepSpeed's
    # comms logger counts the all-gathers of this second rollout (grouped: its order is recorded)
    n = 1 + 3 * rank
    dscomm.configure(enabled=True, prof_all=True)
    dscomm.comms_logger.comms_dict = {}
    uneven = generate(trainer.actor.engine, trainer.tokenizer, ids, mask,
                      cfg.generation.model_copy(update={"min_new_tokens": n, "max_new_tokens": n}))
    all_gathers = sum(c[0] for op, sizes in dscomm.comms_logger.comms_dict.items() if op.startswith("all_gather")
                      for c in sizes.values())
    dscomm.configure(enabled=False)
    rows = []
    for _ in range(steps):
        m = trainer.train_step()
        trainer.step += 1
        rows.append(without_timings(m))
    result = {"mode": mode, "response_ids": ro.response_ids.tolist(), "uneven_response_ids": uneven.response_ids.tolist(),
              "uneven_all_gathers": all_gathers, "n_params": len(params),
              "peak_gathered_bytes": peak[0], "model_bytes": sum(p.ds_numel * p.element_size() for p in params),
              "still_gathered_after_generate": still_gathered, "rows": rows}
    if mode == "grouped":
        gg = GroupedGather(actor, cfg.generation.zero3_gather_budget_mb * 2**20)  # the groups it used
        units = [sum(p.ds_numel * p.element_size() for p in ps) for _, ps in gg._units]
        seen: dict[int, int] = {}
        for _, ps in gg._units:
            for p in ps:
                seen[p.ds_id] = seen.get(p.ds_id, 0) + 1
        shared = sum(p.ds_numel * p.element_size() for p in params if seen.get(p.ds_id, 0) > 1)
        result.update(n_groups=len(gg.groups), group_bytes=gg.group_bytes, largest_module_bytes=max(units),
                      shared_bytes=shared, recorded_order=getattr(actor, GroupedGather._ORDER_ATTR, None))
    return result


def main(out: Path, modes: list[str], overrides: list[str], steps: int) -> None:
    from varpo.dist import init_distributed

    info = init_distributed("gloo")
    for mode in modes:
        result = run_mode(out, mode, overrides, steps, info.rank)
        (out / mode).mkdir(parents=True, exist_ok=True)
        (out / mode / f"rank{info.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modes", nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--local_rank", type=int, default=None)
    a = ap.parse_args()
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    main(a.out, a.modes, a.overrides, a.steps)
