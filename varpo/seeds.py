"""Every seed varpo derives from a run's seed, in one place: a stream name and the counters that
make each draw distinct (the step, the rank, the pass over the data, ...), mixed linearly with
primes so that no two (stream, counters) of a run collide in practice and a resumed run derives
exactly the seeds the uninterrupted one did, at any world size.

    derive_seed("sampling", seed, step, rank) == seed·1000003 + step·1009 + rank"""
from __future__ import annotations

# stream: (multiplier of each part, offset), in the order of derive_seed's parts
STREAMS: dict[str, tuple[tuple[int, ...], int]] = {
    # (seed, pass over the data): the order of the prompts (PPO) or pairs (reward training) in that pass
    "data_order": ((100_003, 1), 0),
    # (seed, step, rank): the generator HF generate samples a rank's rollout from
    "sampling": ((1_000_003, 1009, 1), 0),
    # (a rank's sampling seed, prompt index): vLLM's per-request seed
    "sampling_request": ((100_003, 1), 0),
    # (seed, step, rank): the shuffles of the rollout batch into the update's minibatches
    "minibatch_order": ((7919, 31, 1), 0),
    # (seed, reward_training.head_seed): which pairs each reward head's bootstrap resample holds
    "bootstrap": ((7919, 1), 0),
    # (head seed,): the fixed random prior head beside a reward head (randomized prior functions)
    "prior_head": ((1,), 1_000_003),
}


def derive_seed(stream: str, *parts: int) -> int:
    """The seed of `stream` for these parts (see STREAMS for what each stream's parts are)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r} (expected one of {', '.join(STREAMS)})")
    mult, offset = STREAMS[stream]
    if len(parts) != len(mult):
        raise ValueError(f"seed stream {stream!r} takes {len(mult)} parts, got {len(parts)}")
    return offset + sum(m * int(x) for m, x in zip(mult, parts))
