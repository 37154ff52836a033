"""The PPO trainer end to end on tiny real models and real DeepSpeed engines (CPU, world size 1)."""
from __future__ import annotations

import pytest
import torch

from varpo.masks import position_ids_from_mask
from varpo.outputs import read_jsonl, without_timings
from varpo.ppo.forward import response_logits
from varpo.ppo.tokens import response_mask_from_ids

_rows, _strip = read_jsonl, without_timings


def _train(cfg, out, prompts, scorer):
    from varpo.ppo.trainer import PPOTrainer

    return PPOTrainer.from_config(cfg, out, prompts=prompts, policy_path=cfg.model.policy_path, scorer=scorer).train()


def test_response_mask_matches_loop():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        B, T, eos = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g)), 2
        ids = torch.randint(0, 5, (B, T), generator=g)
        mask, has_eos = response_mask_from_ids(ids, eos)
        for b in range(B):
            row = ids[b].tolist()
            end = row.index(eos) + 1 if eos in row else T
            assert mask[b].tolist() == [1] * end + [0] * (T - end)
            assert bool(has_eos[b]) == (eos in row)


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep` (the full-logits fallback path)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


@pytest.mark.parametrize("wrap", [False, True], ids=["logits_to_keep", "full_logits"])
def test_response_logits_match_unpadded_rows(tiny_policy, wrap, padded_batch):
    """Logits that predicted each response token, from a left-padded prompt / right-padded
    response batch, against each row run alone without any padding in float64."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float64).eval()
    model = _NoLogitsToKeep(lm) if wrap else lm
    g = torch.Generator().manual_seed(11)
    B, P, T, V = 5, 7, 6, lm.config.vocab_size
    ro, rows = padded_batch(g, B, P, T, V)
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            got = response_logits(model, ro, temperature)
        assert got.shape == (B, T, V)
        for b, (pr, rs) in enumerate(rows):
            with torch.no_grad():
                full = lm(input_ids=torch.cat([pr, rs])[None]).logits[0]
            want = full[len(pr) - 1 : len(pr) - 1 + len(rs)] / temperature
            torch.testing.assert_close(got[b, : len(rs)], want, rtol=1e-9, atol=1e-9)


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("bad, match", [
    ("generation.zero3_gather_budget_mb=0", r"generation\.zero3_gather_budget_mb: Input should be greater than 0"),
    ("generation.zero3_gather_budget_mb=-64", r"generation\.zero3_gather_budget_mb: Input should be greater than 0"),
    ("generation.zero3_gather_budget_mb=lots", r"generation\.zero3_gather_budget_mb: Input should be a valid number"),
    ("generation.zero3_gather=layers", r"generation\.zero3_gather: Input should be 'full', 'grouped' or 'per_layer'"),
])
def test_zero3_gather_config_is_validated(bad, match):
    from varpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, [bad])
    good = load_config(None, ["generation.zero3_gather=grouped", "generation.zero3_gather_budget_mb=0.5"]).generation
    assert (good.zero3_gather, good.zero3_gather_budget_mb) == ("grouped", 0.5)


def test_training_writes_metrics_and_policy(make_cfg, prompts, tmp_path, word_scorer):
    cfg = make_cfg("ppo.variance.weighting=batch_mean")
    summary = _train(cfg, tmp_path, prompts, word_scorer())
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for key in ("score_mean", "variance_mean", "kl_mean", "weighted_kl_mean", "kl_coef", "entropy", "clipfrac",
                "approx_kl", "value_loss", "returns_mean", "response_length", "episodes_per_s", "tokens_per_s",
                "time/generate", "time/score", "time/reference", "time/value", "time/shape", "time/update",
                "time/step_cpu"):
        assert key in rows[-1] and rows[-1][key] == rows[-1][key], key
    assert all(0 < r["time/step_cpu"] for r in rows)
    # the summary's throughput is the mean over the steps; its `final` is the last step's metrics
    assert summary["episodes_per_s"] == pytest.approx(sum(r["episodes_per_s"] for r in rows) / 3, rel=1e-12)
    assert summary["tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in rows) / 3, rel=1e-12)
    assert summary["final"]["step"] == 2 and summary["final"]["score_mean"] == rows[-1]["score_mean"]
    assert rows[0]["kl_mean"] == pytest.approx(0.0, abs=1e-5)  # actor == reference before any update
    assert rows[-1]["kl_mean"] != 0.0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(summary["policy_path"])  # exported HF folder loads
    assert (tmp_path / "policy" / "model.safetensors").exists()
    assert (tmp_path / "config.yaml").exists()


def test_variance_aware_equals_vanilla_when_variance_is_one(make_cfg, prompts, tmp_path, word_scorer):
    a = _train(make_cfg("ppo.variance.weighting=none"), tmp_path / "a", prompts, word_scorer(constant_variance=1.0))
    b = _train(make_cfg("ppo.variance.weighting=raw"), tmp_path / "b", prompts, word_scorer(constant_variance=1.0))
    ra, rb = _rows(tmp_path / "a" / "metrics.jsonl"), _rows(tmp_path / "b" / "metrics.jsonl")
    assert [_strip(r) for r in ra] == [_strip(r) for r in rb]
    c = _train(make_cfg("ppo.variance.weighting=raw"), tmp_path / "c", prompts, word_scorer(constant_variance=3.0))
    rc = _rows(tmp_path / "c" / "metrics.jsonl")
    assert rc[-1]["weighted_kl_mean"] != pytest.approx(ra[-1]["weighted_kl_mean"])  # σ² ≠ 1 changes the penalty
    assert a["steps"] == b["steps"] == c["steps"] == 3


def test_heterogeneity_zero_equals_vanilla_and_weight_std_tracks_alpha(make_cfg, prompts, tmp_path, word_scorer):
    """σ² differs across samples here (it depends on the response length), so only α = 0 can make
    variance-aware PPO coincide with vanilla; α > 1 must widen the logged spread of the weights."""
    a = _train(make_cfg("ppo.steps=2", "ppo.variance.weighting=none"), tmp_path / "a", prompts, word_scorer())
    b = _train(make_cfg("ppo.steps=2", "ppo.variance.weighting=batch_mean", "ppo.variance.heterogeneity=0"),
               tmp_path / "b", prompts, word_scorer())
    ra, rb = _rows(tmp_path / "a" / "metrics.jsonl"), _rows(tmp_path / "b" / "metrics.jsonl")
    assert a["steps"] == b["steps"] == 2
    assert [_strip(r) for r in ra] == [_strip(r) for r in rb]
    assert all(r["weight_std"] == 0.0 and r["weight_mean"] == 1.0 for r in ra)
    # one step each: the same first rollout (same seed, untrained actor), so the same σ²
    std = {}
    for alpha in (1, 2):
        out = tmp_path / f"alpha{alpha}"
        _train(make_cfg("ppo.steps=1", "ppo.variance.weighting=batch_mean", f"ppo.variance.heterogeneity={alpha}"),
               out, prompts, word_scorer())
        (row,) = _rows(out / "metrics.jsonl")
        assert row["weight_mean"] == pytest.approx(1.0, rel=1e-6)  # the mean weight is kept at every α
        assert row["variance_mean"] == ra[0]["variance_mean"]
        std[alpha] = row["weight_std"]
    assert 0.0 < std[1] < std[2]


def test_resume_is_exact(make_cfg, prompts, tmp_path, word_scorer):
    """An interrupted run resumes bit for bit; its newest checkpoint truncated (as a full disk or a
    kill during a copy leaves it), resume takes the previous one with a warning and still ends
    exactly where the uninterrupted run does. keep_last=2 prunes the older checkpoints."""
    from varpo import checkpoint as ckpt

    # prompts cut to 3 tokens: the truncation counter must carry on across the resume too
    common = ("ppo.checkpoint_every=1", "checkpoint.keep_last=2", "ppo.variance.weighting=running_mean",
              "ppo.kl.controller=adaptive", "generation.max_prompt_len=3")
    full = make_cfg("ppo.steps=4", *common)
    _train(full, tmp_path / "full", prompts, word_scorer())
    # an interrupted run: stops after 3 steps (checkpoints at 1, 2, 3; 1 pruned)
    _train(make_cfg("ppo.steps=3", *common), tmp_path / "part", prompts, word_scorer())
    root = tmp_path / "part" / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == [ckpt.name_of(2), ckpt.name_of(3)]
    assert (root / ckpt.LATEST).read_text() == ckpt.name_of(3)
    # no pickle where varpo writes: RNG states and trainer state are safetensors and JSON
    newest = root / ckpt.name_of(3)
    assert (newest / "rng_rank0.safetensors").exists() and not list(newest.glob("rng_rank*.pt"))
    shard = max((newest / "actor").glob("*.pt"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=f"{ckpt.name_of(3)} is skipped: actor/{shard.name}: .* bytes"):
        _train(full, tmp_path / "part", prompts, word_scorer())
    ref, got = _rows(tmp_path / "full" / "metrics.jsonl"), _rows(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    assert [_strip(r) for r in got] == [_strip(r) for r in ref]
    assert 0 < got[1]["truncated_prompts"] < got[3]["truncated_prompts"]


def test_non_finite_scores_skip_then_stop(make_cfg, prompts, tmp_path, word_scorer):
    from varpo.ppo.trainer import NonFiniteError

    cfg = make_cfg("ppo.steps=6", "ppo.max_consecutive_bad_steps=2")
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        _train(cfg, tmp_path, prompts, word_scorer(nan_from_call=2))
    rows = _rows(tmp_path / "metrics.jsonl")
    assert "score_mean" in rows[0] and rows[1].get("skipped") is True and rows[1]["skipped_steps"] == 1
