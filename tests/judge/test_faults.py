"""Transport faults and invalid answers, injected by the real local server."""
import numpy as np
import pytest

from varpo.config import ConfigError
from varpo.judge import JudgeError, JudgeScorer
from varpo.judge.local_server import reference_interval


def _expected(scorer, prompts, responses):
    rendered = [scorer.panel.template.render(p, r, 0.0, 10.0) for p, r in zip(prompts, responses)]
    return np.array([reference_interval(t) for t in rendered])


@pytest.mark.parametrize("fault,times,retries", [
    ("500", 2, 2), ("429", 1, 1), ("drop", 2, 2), ("delay", 1, 1), ("badbody", 1, 1),
])
def test_transport_faults_are_retried(server, make_config, fault, times, retries):
    prompts, responses = ["a prompt", "a prompt"], ["fine answer", f"flaky [[fault:{fault}:{times}]]"]
    scorer = JudgeScorer(make_config(server.base_url))
    s = scorer.score(prompts, responses)
    ref = _expected(scorer, prompts, responses)
    assert np.allclose(s.extras["low"].numpy(), ref[:, 0]) and np.allclose(s.extras["high"].numpy(), ref[:, 1])
    st = scorer.stats_summary()[0]
    assert st["retries"] == retries and st["requests"] == 2 + retries and st["invalid_answers"] == 0
    assert server.requests == 2 + retries
    scorer.close()


def test_retry_after_is_honoured(server, make_config):
    # backoff without the header would be ~0.01 s; the server asks for 1 s
    scorer = JudgeScorer(make_config(server.base_url))
    scorer.score(["p"], ["r [[fault:429:2]]"])
    (times,) = server.times.values()
    assert len(times) == 3
    assert times[1] - times[0] >= 0.99 and times[2] - times[1] >= 0.99
    assert scorer.stats_summary()[0]["retries"] == 2
    scorer.close()


def test_retry_after_is_capped(server, make_config):
    scorer = JudgeScorer(make_config(server.base_url, max_retry_after=0.05))
    scorer.score(["p"], ["r [[fault:429:1]]"])
    (times,) = server.times.values()
    assert len(times) == 2 and times[1] - times[0] < 0.9
    scorer.close()


def test_retries_exhausted_names_the_sample(server, make_config):
    scorer = JudgeScorer(make_config(server.base_url, max_retries=2))
    with pytest.raises(JudgeError, match=r"sample 1: request failed \(after 2 retries\): InternalServerError"):
        scorer.score(["p", "p"], ["ok", "broken [[fault:500:always]]"])
    assert server.seen[scorer.panel.template.render("p", "broken [[fault:500:always]]", 0.0, 10.0)] == 3
    scorer.close()


def test_timeouts_exhausted(server, make_config):
    scorer = JudgeScorer(make_config(server.base_url, max_retries=1, timeout=0.2))
    with pytest.raises(JudgeError, match="APITimeoutError"):
        scorer.score(["p"], ["slow [[fault:delay:always]]"])
    assert scorer.stats_summary()[0]["retries"] == 1
    scorer.close()


def test_client_errors_are_not_retried(server, make_config):
    # a base URL whose route the server does not serve: 404, which no retry can fix
    scorer = JudgeScorer(make_config(server.base_url.removesuffix("/v1") + "/nowhere/v1"))
    with pytest.raises(JudgeError, match="not retryable.*NotFoundError"):
        scorer.score(["p"], ["r"])
    assert server.requests == 1
    scorer.close()


@pytest.mark.parametrize("fault", ["malformed", "inverted", "oob"])
def test_invalid_answer_is_reasked(server, make_config, fault):
    scorer = JudgeScorer(make_config(server.base_url))
    s = scorer.score(["p"], [f"r [[fault:{fault}:1]]"])
    ref = _expected(scorer, ["p"], [f"r [[fault:{fault}:1]]"])
    assert s.extras["low"].item() == pytest.approx(ref[0, 0]) and bool(s.valid.all())
    st = scorer.stats_summary()[0]
    assert st["invalid_answers"] == 1 and st["reasks"] == 1 and st["requests"] == 2 and st["retries"] == 0
    scorer.close()


@pytest.mark.parametrize("fault", ["fenced", "bracket"])
def test_other_answer_formats_parse_first_time(server, make_config, fault):
    scorer = JudgeScorer(make_config(server.base_url))
    s = scorer.score(["p"], [f"r [[fault:{fault}:1]]"])
    ref = _expected(scorer, ["p"], [f"r [[fault:{fault}:1]]"])
    assert s.extras["high"].item() == pytest.approx(ref[0, 1])
    assert scorer.stats_summary()[0]["requests"] == 1
    scorer.close()


def test_policy_fail_names_the_sample(server, make_config):
    scorer = JudgeScorer(make_config(server.base_url, on_invalid="fail", max_reasks=1))
    with pytest.raises(JudgeError, match=r"sample 2: judge judge-a@.* gave no valid interval in 2 answers "
                                         r"\(low must not exceed high"):
        scorer.score(["p"] * 3, ["x", "y", "z [[fault:inverted:always]]"])
    scorer.close()


def test_policy_drop_masks_and_counts(server, make_config):
    scorer = JudgeScorer(make_config(server.base_url, on_invalid="drop", max_reasks=2))
    s = scorer.score(["p"] * 4, ["x", "bad [[fault:oob:always]]", "y", "worse [[fault:malformed:always]]"])
    assert s.valid.tolist() == [True, False, True, False]
    # dropped samples carry the finite know-nothing prior, never NaN
    assert s.score[1].item() == 5.0 and s.variance[1].item() == pytest.approx(100 / 12)
    assert s.extras["errors"][0] is None and "sample 1" in s.extras["errors"][1]
    st = scorer.stats_summary()[0]
    assert st["dropped"] == 2 and st["invalid_answers"] == 6 and st["reasks"] == 4
    assert server.requests == 2 + 2 * 3
    scorer.close()


def test_concurrency_is_bounded(make_config):
    from varpo.judge.local_server import JudgeServer

    with JudgeServer(latency=0.03) as srv:
        scorer = JudgeScorer(make_config(srv.base_url, concurrency=3))
        scorer.score(["p"] * 20, [f"r{i}" for i in range(20)])
        assert srv.max_inflight == 3  # reached, never exceeded
        scorer.close()


def test_no_judge_configured_is_a_config_error(tmp_path):
    from varpo.config.judge import JudgeConfig

    with pytest.raises(ConfigError, match="judge.judges"):
        JudgeScorer(JudgeConfig(cache=None))


def test_bad_bounds_rejected():
    from varpo.config import load_config

    with pytest.raises(ConfigError, match="judge.bounds"):
        load_config(None, ["judge.bounds=[5, 1]"])
