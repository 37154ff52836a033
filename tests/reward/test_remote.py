"""reward.type=remote, direct back end, against real HTTP servers: varpo's reference reward server
(in a thread, or as its own process that is killed and restarted) serving a tiny trained-shape
ensemble. The vLLM back end is tested in tests/vllm/test_remote_reward.py."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from .conftest import make_tokenizer

PROMPTS = ["the food was", "we visited the place", "staff and view", "a bit", "the room was very"] * 3
RESPONSES = ["great and clean .", "awful .", "very friendly staff", "noisy room and dirty", "lovely view ."] * 3


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A saved 4-head ensemble on a random 2-layer Llama (pooling last, nonzero head biases)."""
    from varpo.reward.model import EnsembleRewardModel

    from .conftest import llama_config

    path = tmp_path_factory.mktemp("remote_ensemble")
    torch.manual_seed(0)
    model = EnsembleRewardModel.from_backbone(llama_config(), 4, pooling="last")
    with torch.no_grad():
        model.heads.bias.copy_(torch.randn(4))
    model.save_pretrained(path, tokenizer=make_tokenizer())
    return str(path)


def cfg_for(ensemble, base_url, tmp_path, *extra):
    from varpo.config import load_config

    return load_config(None, [f"reward.path={ensemble}", "reward.type=remote", f"reward.remote.base_url={base_url}",
                              "reward.remote.model=tiny-rm", f"reward.remote.cache={tmp_path / 'rewards.sqlite'}",
                              "reward.remote.backoff_base=0.01", "reward.remote.backoff_max=0.05", *extra])


@pytest.fixture
def in_process(ensemble):
    from varpo.config import load_config
    from varpo.scoring import build_scorer

    return build_scorer(load_config(None, [f"reward.path={ensemble}"]))


@pytest.fixture
def server(ensemble, in_process):
    from varpo.reward.server import RewardServer

    with RewardServer(in_process, model="tiny-rm") as srv:
        yield srv


def test_direct_equals_in_process_with_batching_and_bounded_concurrency(ensemble, in_process, server, tmp_path):
    from varpo.scoring import build_scorer

    want = in_process.score(PROMPTS, RESPONSES)
    scorer = build_scorer(cfg_for(ensemble, server.base_url, tmp_path, "reward.remote.batch_size=2",
                                  "reward.remote.concurrency=3"))
    got = scorer.score(PROMPTS, RESPONSES)
    assert torch.allclose(got.score, want.score, atol=1e-6) and torch.allclose(got.variance, want.variance, atol=1e-6)
    assert torch.allclose(got.eval_reward, want.eval_reward, atol=1e-6)
    assert torch.allclose(got.extras["per_head"], want.extras["per_head"], atol=1e-6)
    assert server.requests == 8  # 15 samples in batches of 2
    assert 1 < server.max_inflight <= 3
    assert float(got.variance.min()) > 0


def test_cache_answers_repeats_and_is_keyed_by_model(ensemble, in_process, server, tmp_path):
    from varpo.reward.remote import RemoteRewardError
    from varpo.scoring import build_scorer

    scorer = build_scorer(cfg_for(ensemble, server.base_url, tmp_path))
    first = scorer.score(PROMPTS[:5], RESPONSES[:5])
    n = server.requests
    again = build_scorer(cfg_for(ensemble, server.base_url, tmp_path)).score(PROMPTS[:5], RESPONSES[:5])
    assert server.requests == n  # every sample from the cache, in another scorer (another process alike)
    assert torch.equal(first.score, again.score) and torch.equal(first.variance, again.variance)
    # another model name is another key: it goes to the server, which serves tiny-rm only
    other = build_scorer(cfg_for(ensemble, server.base_url, tmp_path, "reward.remote.model=other-rm"))
    with pytest.raises(RemoteRewardError, match=r"other-rm@http://127\.0\.0\.1:\d+/v1/rewards.*not retryable.*404"):
        other.score(PROMPTS[:1], RESPONSES[:1])
    assert server.requests == n + 1


def test_failures_are_retried_and_counted(ensemble, in_process, tmp_path):
    from varpo.reward.server import RewardServer
    from varpo.scoring import build_scorer

    with RewardServer(in_process, model="tiny-rm", fail_first=2) as srv:
        scorer = build_scorer(cfg_for(ensemble, srv.base_url, tmp_path, "reward.remote.max_retries=3"))
        got = scorer.score(PROMPTS[:3], RESPONSES[:3])
    assert torch.allclose(got.score, in_process.score(PROMPTS[:3], RESPONSES[:3]).score, atol=1e-6)
    st = scorer.stats_summary()
    assert (st["requests"], st["retries"], st["outages"]) == (3, 2, 1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_stays_down_stops_the_run_naming_it(ensemble, tmp_path):
    from varpo.reward.remote import RemoteRewardError
    from varpo.scoring import build_scorer

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    scorer = build_scorer(cfg_for(ensemble, url, tmp_path, "reward.remote.max_retries=2",
                                  "reward.remote.wait_for_server_s=1.5"))
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match=rf"reward server tiny-rm@{url}/rewards: scoring 3 samples failed "
                                                 r"\(after \d+ retries over \d+ s\): ConnectError"):
        scorer.score(PROMPTS[:3], RESPONSES[:3])
    took = time.monotonic() - t0
    assert 1.5 <= took < 20  # waited the configured window, then stopped


def test_a_slow_server_times_out_and_is_named(ensemble, in_process, tmp_path):
    from varpo.reward.remote import RemoteRewardError
    from varpo.reward.server import RewardServer
    from varpo.scoring import build_scorer

    class Counting:  # the scorer behind the server, counting the requests it finished
        def __init__(self):
            self.done = 0

        def score(self, prompts, responses):
            out = in_process.score(prompts, responses)
            self.done += 1
            return out

    behind = Counting()
    with RewardServer(behind, model="tiny-rm", latency=1.0) as srv:
        scorer = build_scorer(cfg_for(ensemble, srv.base_url, tmp_path, "reward.remote.timeout=0.2",
                                      "reward.remote.max_retries=1", "reward.remote.wait_for_server_s=0"))
        with pytest.raises(RemoteRewardError, match=r"after 1 retries.*Timeout"):
            scorer.score(PROMPTS[:1], RESPONSES[:1])
    # stopping the server waited for both timed-out requests (first try and the retry): none is left
    # running to score in this process later
    assert behind.done == 2


def test_protocol_violations_are_clear_errors(ensemble, tmp_path):
    """A server answering the wrong number of rewards, or a negative variance, is named; nothing is cached."""
    from varpo.reward.remote import RemoteRewardError
    from varpo.reward.server import RewardServer
    from varpo.reward_source import Scores
    from varpo.scoring import build_scorer

    class Liar:
        def __init__(self, n_extra=0, var=0.1):
            self.n_extra, self.var = n_extra, var

        def score(self, prompts, responses):
            n = len(prompts) + self.n_extra
            return Scores(score=torch.zeros(n), variance=torch.full((n,), self.var))

    for liar, msg in ((Liar(n_extra=1), r"sent 2 items, got 3 rewards"), (Liar(var=-1.0), r"variance ≥ 0")):
        with RewardServer(liar, model="tiny-rm") as srv:
            scorer = build_scorer(cfg_for(ensemble, srv.base_url, tmp_path))
            with pytest.raises(RemoteRewardError, match=msg):
                scorer.score(PROMPTS[:2], RESPONSES[:2])
    assert len(scorer.cache) == 0


def _start_server(ensemble, port: int, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "varpo.reward.server", "--reward-path", ensemble, "--model",
                             "tiny-rm", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx2

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the reward server exited"
        try:
            if httpx2.get(f"{url}/health", timeout=2).json()["status"] == "ok":
                return
        except (httpx2.TransportError, ValueError):
            time.sleep(0.5)
    raise AssertionError(f"reward server at {url} not healthy after {timeout} s")


@pytest.mark.slow
def test_a_killed_server_is_waited_for_and_the_scores_resume(ensemble, in_process, tmp_path):
    """SIGKILL the server process, score while it is down: the client waits (retrying), the server is
    restarted on the same port, and the scores come back equal to in-process ones."""
    from varpo.scoring import build_scorer

    port = _closed_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = open(tmp_path / "server.log", "ab")
    proc = _start_server(ensemble, port, log)
    try:
        _wait_healthy(url, proc)
        scorer = build_scorer(cfg_for(ensemble, url, tmp_path, "reward.remote.wait_for_server_s=300",
                                      "reward.remote.backoff_max=0.5", "reward.remote.cache=null"))
        before = scorer.score(PROMPTS[:2], RESPONSES[:2])
        proc.kill()
        proc.wait()
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(s=scorer.score(PROMPTS, RESPONSES)))
        th.start()
        time.sleep(3)
        assert th.is_alive() and scorer.stats.retries > 0  # waiting on the dead server, not failed
        proc = _start_server(ensemble, port, log)
        th.join(timeout=300)
        assert not th.is_alive()
    finally:
        proc.kill()
        proc.wait()
        log.close()
    want = in_process.score(PROMPTS, RESPONSES)
    assert torch.allclose(out["s"].score, want.score, atol=1e-6)
    assert torch.allclose(out["s"].variance, want.variance, atol=1e-6)
    assert torch.allclose(before.score, want.score[:2], atol=1e-6)
    st = scorer.stats_summary()
    assert st["outages"] == 1 and st["waited_s"] >= 3


def test_config_names_what_remote_needs(ensemble):
    from varpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"reward\.remote\.base_url and reward\.remote\.model"):
        load_config(None, ["reward.type=remote"])
    with pytest.raises(ConfigError, match=r"backend=vllm needs reward\.path"):
        load_config(None, ["reward.type=remote", "reward.remote.backend=vllm", "reward.remote.base_url=http://h:1",
                           "reward.remote.model=m"])
    cfg = load_config(None, ["reward.type=remote", "reward.remote.base_url=http://h:1", "reward.remote.model=m",
                             f"reward.path={ensemble}", "reward.remote.api_key_env=VARPO_TEST_UNSET_KEY"])
    from varpo.scoring import build_scorer

    with pytest.raises(ValueError, match="VARPO_TEST_UNSET_KEY is not set"):
        build_scorer(cfg)


def test_health_route_and_protocol_doc(server):
    import httpx2

    got = httpx2.get(f"{server.base_url}/health").json()
    assert got == {"status": "ok", "model": "tiny-rm", "protocol": "varpo-reward/1"}
    r = httpx2.post(f"{server.base_url}/rewards", content=json.dumps({"items": [{"prompt": "a"}]}))
    assert r.status_code == 400 and "items" in r.json()["error"]["message"]


@pytest.mark.slow
def test_ppo_with_a_remote_reward_logs_the_in_process_rewards(ensemble, in_process, server, tiny_backbone, tmp_path):
    """A PPO run with reward.type=remote (direct protocol, the reference server over real HTTP): every
    logged (prompt, response) rescored by the same ensemble in-process gives the logged s and σ²."""
    from varpo.ppo import train_ppo

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = cfg_for(ensemble, server.base_url, tmp_path, f"model.policy_path={tiny_backbone}",
                  f"data.prompts_path={prompts}", "ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2",
                  "ppo.ppo_epochs=1", "ppo.log_samples_every=1", "generation.max_new_tokens=6",
                  "generation.max_prompt_len=12")
    train_ppo(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and server.scored >= 8
    want = in_process.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert torch.allclose(torch.tensor([r["score"] for r in rows]), want.score, atol=1e-5)
    assert torch.allclose(torch.tensor([r["variance"] for r in rows]), want.variance, atol=1e-5)
