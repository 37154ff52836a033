"""varpo.seeds.derive_seed: every seed a run derives, one function. The values are the ones the
trainers drew before there was one (so a run resumed across that change, or compared with an older
one, draws the same): checked here against the formulas they replaced."""
from __future__ import annotations

import itertools

import pytest

from varpo.seeds import STREAMS, derive_seed


def test_the_streams_give_the_seeds_the_trainers_always_used():
    for seed, a, b in itertools.product((0, 3, -2, 12345), (0, 1, 7), (0, 1, 3)):
        assert derive_seed("data_order", seed, a) == seed * 100003 + a
        assert derive_seed("sampling", seed, a, b) == seed * 1_000_003 + a * 1009 + b
        assert derive_seed("minibatch_order", seed, a, b) == seed * 7919 + a * 31 + b
        assert derive_seed("bootstrap", seed, a) == seed * 7919 + a
        assert derive_seed("sampling_request", seed, a) == seed * 100_003 + a
        assert derive_seed("prior_head", seed) == 1_000_003 + seed


def test_no_two_draws_of_one_run_share_a_seed_within_a_stream():
    for stream in ("sampling", "minibatch_order"):
        seen = {derive_seed(stream, 5, step, rank) for step in range(2000) for rank in range(16)}
        assert len(seen) == 2000 * 16, stream


def test_bad_calls_name_the_streams_and_the_parts():
    with pytest.raises(ValueError, match="unknown seed stream 'nope'.*data_order"):
        derive_seed("nope", 1)
    with pytest.raises(ValueError, match="'sampling' takes 3 parts, got 2"):
        derive_seed("sampling", 1, 2)
    assert set(STREAMS) >= {"data_order", "sampling", "sampling_request", "minibatch_order", "bootstrap", "prior_head"}
