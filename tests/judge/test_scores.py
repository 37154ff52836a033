"""The reward distribution: U[a, b] draws, (b − a)²/12, midpoints, judge combination — checked against
independent float64 references (scipy's uniform distribution, numerical integration of the mixture)."""
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from varpo.judge import JudgeScorer, combine_intervals, draw_rewards, sample_seed
from varpo.judge.local_server import reference_interval
from varpo.reward_source import Scorer


def _random_intervals(rng, B, J, lo=0.0, hi=10.0):
    a = rng.uniform(lo, hi, size=(B, J))
    b = a + rng.uniform(0, hi - a)
    return a, b


def test_single_judge_is_uniform_moments():
    rng = np.random.default_rng(11)
    a, b = _random_intervals(rng, 13, 1)
    for rule in ("mixture", "average"):
        c = combine_intervals(a, b, rule)
        for i in range(13):
            ref = stats.uniform(loc=a[i, 0], scale=b[i, 0] - a[i, 0])
            assert c["midpoint"][i] == pytest.approx(ref.mean(), rel=1e-12, abs=1e-12)
            assert c["variance"][i] == pytest.approx(ref.var(), rel=1e-10, abs=1e-12)
            assert (c["low"][i], c["high"][i]) == (a[i, 0], b[i, 0])


def test_mixture_moments_match_numerical_integration():
    rng = np.random.default_rng(5)
    B, J = 7, 3
    a, b = _random_intervals(rng, B, J)
    c = combine_intervals(a, b, "mixture")
    for i in range(B):
        def pdf(x, i=i):
            return sum(((a[i, j] <= x <= b[i, j]) / (b[i, j] - a[i, j])) for j in range(J)) / J

        pts = sorted(set(a[i]) | set(b[i]))
        m1 = integrate.quad(lambda x: x * pdf(x), 0, 10, points=pts, limit=200)[0]
        m2 = integrate.quad(lambda x: x * x * pdf(x), 0, 10, points=pts, limit=200)[0]
        assert c["midpoint"][i] == pytest.approx(m1, rel=1e-7)
        assert c["variance"][i] == pytest.approx(m2 - m1 ** 2, rel=1e-6)
        assert c["low"][i] == a[i].min() and c["high"][i] == b[i].max()


def test_average_rule():
    a = np.array([[1.0, 3.0, 5.0]])
    b = np.array([[2.0, 7.0, 9.0]])
    c = combine_intervals(a, b, "average")
    assert c["low"][0] == 3.0 and c["high"][0] == 6.0
    assert c["variance"][0] == pytest.approx(9 / 12) and c["midpoint"][0] == 4.5


def test_draws_are_uniform_on_the_interval():
    a, b = np.full((4000, 1), 2.5), np.full((4000, 1), 6.0)
    seeds = [sample_seed(0, 0, i, "p", "r") for i in range(4000)]
    x = draw_rewards(a, b, seeds, "mixture")
    assert x.min() >= 2.5 and x.max() <= 6.0
    assert stats.kstest(x, stats.uniform(loc=2.5, scale=3.5).cdf).pvalue > 1e-3


def test_mixture_draws_follow_the_mixture():
    a = np.tile([[0.0, 6.0]], (6000, 1))
    b = np.tile([[2.0, 10.0]], (6000, 1))
    seeds = [sample_seed(3, 0, i, "p", "r") for i in range(6000)]
    x = draw_rewards(a, b, seeds, "mixture")
    assert not ((x > 2.0) & (x < 6.0)).any()  # the gap between the two intervals is never drawn

    def cdf(t):
        return 0.5 * np.clip(t / 2, 0, 1) + 0.5 * np.clip((t - 6) / 4, 0, 1)

    assert stats.kstest(x, cdf).pvalue > 1e-3


def test_seed_depends_on_every_part():
    base = sample_seed(0, 0, 0, "p", "r")
    others = [sample_seed(1, 0, 0, "p", "r"), sample_seed(0, 1, 0, "p", "r"), sample_seed(0, 0, 1, "p", "r"),
              sample_seed(0, 0, 0, "pr", ""), sample_seed(0, 0, 0, "p", "r2")]
    assert len({base, *others}) == 6
    assert sample_seed(0, 0, 0, "p", "r") == base


def test_scorer_scores_against_server(server, make_config):
    prompts = [f"prompt {i}" for i in range(9)]
    responses = [f"response number {i}" for i in range(9)]
    scorer = JudgeScorer.from_config(make_config(server.base_url))
    assert isinstance(scorer, Scorer)
    s = scorer.score(prompts, responses)
    rendered = [scorer.panel.template.render(p, r, 0.0, 10.0) for p, r in zip(prompts, responses)]
    ref = np.array([reference_interval(t) for t in rendered])
    assert torch.allclose(s.extras["low"], torch.tensor(ref[:, 0], dtype=torch.float32))
    assert torch.allclose(s.extras["high"], torch.tensor(ref[:, 1], dtype=torch.float32))
    assert torch.allclose(s.variance, torch.tensor((ref[:, 1] - ref[:, 0]) ** 2 / 12, dtype=torch.float32))
    assert torch.allclose(s.eval_reward, torch.tensor(ref.mean(axis=1), dtype=torch.float32))
    assert bool(((s.score >= s.extras["low"]) & (s.score <= s.extras["high"])).all())
    assert s.valid.dtype == torch.bool and bool(s.valid.all())
    # the next call (a later PPO step) draws afresh for the same texts, from the cached intervals
    before = server.requests
    s2 = scorer.score(prompts, responses)
    assert server.requests == before
    assert torch.equal(s2.extras["low"], s.extras["low"]) and not torch.equal(s2.score, s.score)
    st = scorer.stats_summary()[0]
    assert st["samples"] == 18 and st["cache_hits"] == 9 and st["requests"] == 9
    assert st["mean_width"] == pytest.approx(float((ref[:, 1] - ref[:, 0]).mean()))
    scorer.close()


def test_draws_do_not_depend_on_concurrency_or_cache(tmp_path, make_config):
    from varpo.judge.local_server import JudgeServer

    prompts = [f"q{i}" for i in range(24)]
    responses = [f"a{i}" * (i % 5 + 1) for i in range(24)]
    results = []
    # latency makes requests overlap, so completion order differs between the two runs
    with JudgeServer(latency=0.01) as srv:
        for conc, cache in ((1, tmp_path / "c1.sqlite"), (12, tmp_path / "c2.sqlite"), (12, tmp_path / "c2.sqlite")):
            scorer = JudgeScorer(make_config(srv.base_url, concurrency=conc, cache=str(cache), seed=7))
            results.append(scorer.score(prompts, responses))
            scorer.close()
        assert srv.max_inflight > 1
    for r in results[1:]:
        assert torch.equal(r.score, results[0].score) and torch.equal(r.variance, results[0].variance)


def test_two_judges_mixture(tmp_path, make_config):
    from varpo.judge.local_server import JudgeServer

    with JudgeServer() as s1, JudgeServer(salt="other opinions") as s2:
        cfg = make_config(s1.base_url, judges=[{"base_url": s1.base_url, "model": "a", "name": "A"},
                                               {"base_url": s2.base_url, "model": "b", "name": "B"}])
        scorer = JudgeScorer(cfg)
        prompts, responses = ["p1", "p2", "p3", "p4", "p5"], ["x", "y", "z", "w", "v"]
        s = scorer.score(prompts, responses)
        rendered = [scorer.panel.template.render(p, r, 0.0, 10.0) for p, r in zip(prompts, responses)]
        a = np.array([[reference_interval(t)[0], reference_interval("other opinions" + t)[0]] for t in rendered])
        b = np.array([[reference_interval(t)[1], reference_interval("other opinions" + t)[1]] for t in rendered])
        assert np.allclose(s.extras["judge_low"].double().numpy(), a, atol=1e-6)
        assert np.allclose(s.extras["judge_high"].double().numpy(), b, atol=1e-6)
        assert s1.requests == 5 and s2.requests == 5
        # law of total variance, written out per sample
        for i in range(5):
            m = (a[i] + b[i]) / 2
            within = np.mean((b[i] - a[i]) ** 2 / 12)
            between = np.mean((m - m.mean()) ** 2)
            assert s.variance[i].item() == pytest.approx(within + between, rel=1e-5)
            assert s.eval_reward[i].item() == pytest.approx(m.mean(), rel=1e-6)
            # each draw lies in one of the two judges' intervals
            x = s.score[i].item()
            assert any(a[i, j] - 1e-5 <= x <= b[i, j] + 1e-5 for j in range(2))
        assert s.extras["low"].tolist() == pytest.approx(a.min(axis=1).tolist())
        stats_ = {x["judge"]: x for x in scorer.stats_summary()}
        assert set(stats_) == {"A", "B"} and stats_["A"]["samples"] == 5
        scorer.close()


def test_score_inside_a_running_event_loop(server, make_config):
    import asyncio

    scorer = JudgeScorer(make_config(server.base_url))

    async def caller():  # e.g. a notebook: score() must not try to nest event loops
        return scorer.score(["p"], ["r"])

    s = asyncio.run(caller())
    assert bool(s.valid.all()) and server.requests == 1
    scorer.close()


def test_trainer_builds_the_judge_scorer(server, tmp_path):
    from varpo.config import load_config
    from varpo.scoring import build_scorer

    cfg = load_config(None, ["reward.type=judge", f"judge.judges=[{{base_url: '{server.base_url}', model: m}}]",
                             f"judge.cache={tmp_path / 'c.sqlite'}"])
    scorer = build_scorer(cfg)
    assert isinstance(scorer, JudgeScorer)
    s = scorer.score(["p", "q"], ["r", "s"])
    assert s.score.shape == (2,) and s.score.dtype == torch.float32 and bool(s.valid.all())
    scorer.close()
