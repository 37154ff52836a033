"""reward.type=remote: the reward model runs apart from the trainer, behind HTTP; the trainer sends
(prompt, response) pairs and gets a reward s and its uncertainty σ² per sample (docs/remote_reward.md).

Two back ends (`reward.remote.backend`):
  direct  any endpoint speaking varpo's reward protocol, POST {base_url}/rewards:
              {"model": M, "items": [{"prompt": p, "response": r}, ...]}
          -> {"model": M, "rewards": [{"reward": s, "variance": σ², "eval_reward": m?, "heads": [...]?}, ...]}
          one entry per item, in order; the server aggregates (`python -m varpo.reward.server` serves a
          trained ensemble this way).
  vllm    a vLLM server running the backbone with its pooling API, POST {base_url}/pooling with token
          ids that varpo computes exactly as the in-process scorer does (varpo.reward.encode: prompt +
          separator + response + EOS, cut from the left at reward.max_length). With output=hidden the
          server returns the backbone's pooled last hidden state and varpo applies the ensemble's K
          heads (prior heads, member standardisation) from reward.path; with output=scores a
          sequence-classification model returns K scores itself. Either way s, σ² (over the K, ddof)
          and the evaluation mean come from reward.aggregation/ddof/λ/k, as in-process.

Requests carry `reward.remote.batch_size` samples, at most `concurrency` in flight; retries, backoff
and the wait for a server that is down are varpo's shared policy (varpo.http_retry): a refused
connection, a timeout, 408/409/429 or 5xx is retried; after `max_retries` retries and
`wait_for_server_s` seconds the run stops with a RemoteRewardError naming the server. Results are
cached per sample (varpo.result_cache), keyed by (prompt, response, model and whatever else
determines them: backend, heads, max_length, separator), and stored as soon as they arrive.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..aio import gather_or_cancel
from ..http_retry import retryable_status, retrying, run_coroutine
from ..reward_source import Scores

PROTOCOL = "varpo-reward/1"


class RemoteRewardError(RuntimeError):
    """The reward server could not score a batch (after the retries), or answered against the protocol."""


class _RetryableBody(Exception):
    """A 200 response whose body is not JSON (a proxy's error page, a truncated answer)."""


class _StatusError(Exception):
    def __init__(self, status: int, text: str, response):
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status, self.response = status, response


def _retryable(exc: BaseException) -> bool:
    import httpx2

    if isinstance(exc, (httpx2.TransportError, asyncio.TimeoutError, _RetryableBody)):
        return True  # refused or dropped connections, read/connect timeouts
    return isinstance(exc, _StatusError) and retryable_status(exc.status)


@dataclass
class RemoteStats:
    """Counters over the life of a scorer."""

    label: str
    samples: int = 0
    cache_hits: int = 0
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    outages: int = 0  # times the server was found failing (each resolved or fatal)
    waited_s: float = 0.0  # seconds spent in retries
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        return {"server": self.label, "samples": self.samples, "cache_hits": self.cache_hits,
                "requests": self.requests, "retries": self.retries, "outages": self.outages,
                "waited_s": round(self.waited_s, 3),
                "latency_mean_s": sum(lat) / len(lat) if lat else None,
                "latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None}


# ----------------------------------------------------------------------------- back ends
class DirectBackend:
    """varpo's reward protocol: the server returns reward and σ² per sample."""

    route = "/rewards"

    def __init__(self, rcfg):
        self.model = rcfg.remote.model

    def cache_fields(self) -> dict:
        return {"backend": "direct", "model": self.model}

    def body(self, prompts: list[str], responses: list[str]) -> dict:
        return {"model": self.model, "items": [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]}

    def parse(self, data, n: int, where: str) -> list[dict]:
        if not isinstance(data, dict) or not isinstance(data.get("rewards"), list):
            raise RemoteRewardError(f"{where}: expected a JSON object with a 'rewards' list ({PROTOCOL}), got "
                                    f"{str(data)[:200]}")
        if data.get("model") not in (None, self.model):
            raise RemoteRewardError(f"{where}: the server scores with model {data.get('model')!r}, but "
                                    f"reward.remote.model is {self.model!r}")
        rows = data["rewards"]
        if len(rows) != n:
            raise RemoteRewardError(f"{where}: sent {n} items, got {len(rows)} rewards")
        out = []
        for i, row in enumerate(rows):
            try:
                s, v = float(row["reward"]), float(row["variance"])
                m = float(row.get("eval_reward", s))
                heads = [float(x) for x in row["heads"]] if row.get("heads") is not None else None
            except (TypeError, KeyError, ValueError) as exc:
                raise RemoteRewardError(f"{where}: rewards[{i}] needs numbers 'reward' and 'variance' "
                                        f"({type(exc).__name__}: {exc}); got {str(row)[:200]}") from None
            if not (math.isfinite(s) and math.isfinite(v) and math.isfinite(m)) or v < 0:
                raise RemoteRewardError(f"{where}: rewards[{i}] must be finite with variance ≥ 0, got {row}")
            out.append({"reward": s, "variance": v, "eval_reward": m, "heads": heads})
        return out

    def scores(self, results: list[dict]) -> Scores:
        t = lambda key: torch.tensor([r[key] for r in results], dtype=torch.float32)  # noqa: E731
        extras: dict = {"truncated": 0}
        if results and all(r["heads"] is not None for r in results) and len({len(r["heads"]) for r in results}) == 1:
            extras["per_head"] = torch.tensor([r["heads"] for r in results], dtype=torch.float32)
        return Scores(score=t("reward"), variance=t("variance"), eval_reward=t("eval_reward"), extras=extras)


class VllmBackend:
    """A vLLM server's pooling API; tokenization and (output=hidden) the ensemble's heads here."""

    route = "/pooling"

    def __init__(self, rcfg):
        from transformers import AutoTokenizer

        from .encode import model_max_length

        rem = rcfg.remote
        self.model, self.output = rem.model, rem.output
        self.aggregation, self.ddof, self.lam, self.k = rcfg.aggregation, rcfg.ddof, rcfg.lam, rcfg.k
        path = Path(rcfg.path).expanduser()
        conf = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.separator = conf.get("separator", " ")
        self.heads = None
        heads_sha = None
        if self.output == "hidden":
            from .deep import DEEP_MODEL_TYPE
            from .ensemble import HEADS_NAME
            from .model import MODEL_TYPE, EnsembleRewardModel

            if conf.get("model_type") == DEEP_MODEL_TYPE:
                raise ValueError(f"reward.path {path}: a deep ensemble has K backbones, and a vLLM server runs one; "
                                 "serve it with reward.remote.backend=direct (python -m varpo.reward.server)")
            if conf.get("model_type") != MODEL_TYPE:
                raise ValueError(f"reward.path {path}: reward.remote.output=hidden applies the heads of a varpo "
                                 f"ensemble folder (config.json model_type {MODEL_TYPE!r}); got "
                                 f"{conf.get('model_type')!r} (for a sequence-classification model use output=scores)")
            self.heads = EnsembleRewardModel.from_pretrained(path, backbone_weights=False)
            heads_sha = hashlib.sha256((path / HEADS_NAME).read_bytes()).hexdigest()
            self.max_length = model_max_length(self.heads.backbone_config, rcfg.max_length)
            self.pooling = self.heads.pooling
        else:
            from transformers import AutoConfig

            self.max_length = model_max_length(AutoConfig.from_pretrained(str(path)), rcfg.max_length)
            self.pooling = "server"
        self._fields = {"backend": "vllm", "model": self.model, "output": self.output, "heads": heads_sha,
                        "pooling": self.pooling, "max_length": self.max_length, "separator": self.separator}

    def cache_fields(self) -> dict:
        return dict(self._fields)

    def encode(self, prompts: list[str], responses: list[str]) -> tuple[list[list[int]], list[bool]]:
        from .encode import token_ids, truncate_left

        cut = [truncate_left(x, self.max_length, self.tokenizer.bos_token_id)
               for x in token_ids(self.tokenizer, prompts, responses, self.separator)]
        return [x for x, _ in cut], [c for _, c in cut]

    def body(self, prompts: list[str], responses: list[str]) -> dict:
        ids, _ = self.encode(prompts, responses)
        return {"model": self.model, "input": ids, "task": "embed" if self.output == "hidden" else "classify",
                "use_activation": False}

    def parse(self, data, n: int, where: str) -> list[dict]:
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list) or len(rows) != n:
            raise RemoteRewardError(f"{where}: expected vLLM's pooling response with {n} entries in 'data', got "
                                    f"{str(data)[:200]}")
        try:
            vecs = torch.tensor([r["data"] for r in sorted(rows, key=lambda r: r["index"])], dtype=torch.float32)
        except (TypeError, KeyError, ValueError) as exc:
            raise RemoteRewardError(f"{where}: pooling entries need 'index' and a flat 'data' vector ({exc})") from None
        if vecs.dim() != 2:
            raise RemoteRewardError(f"{where}: expected one vector per input, got shape {tuple(vecs.shape)} (is the "
                                    "server started with a sequence pooling type, LAST or MEAN?)")
        if self.output == "hidden":
            h = self.heads.heads.in_features
            if vecs.shape[1] != h:
                raise RemoteRewardError(f"{where}: pooled vectors have {vecs.shape[1]} entries, the ensemble's "
                                        f"backbone {h}: the server runs another model than reward.path's backbone")
            with torch.no_grad():
                vecs = self.heads.rewards_from_pooled(vecs)
        return [{"heads": v.tolist()} for v in vecs]

    def scores(self, results: list[dict], truncated: int = 0) -> Scores:
        from .aggregate import aggregate_from_stats
        from .ensemble import statistics

        r = torch.tensor([x["heads"] for x in results], dtype=torch.float32).reshape(len(results), -1)
        st = statistics(r, self.ddof)
        s = aggregate_from_stats(r, st, self.aggregation, lam=self.lam, k=self.k)
        return Scores(score=s.float(), variance=st.var.float(), eval_reward=st.mean.float(),
                      extras={"per_head": r, "truncated": truncated})


# ----------------------------------------------------------------------------- the scorer
class RemoteRewardScorer:
    """`varpo.reward_source.Scorer` over a reward server (reward.type=remote)."""

    def __init__(self, rcfg):
        rem = rcfg.remote
        rem.check(rcfg.path)
        self.cfg = rem
        self.backend = VllmBackend(rcfg) if rem.backend == "vllm" else DirectBackend(rcfg)
        self.url = rem.base_url.rstrip("/") + self.backend.route
        self.label = f"{rem.model}@{self.url}"
        self.stats = RemoteStats(self.label)
        self.truncated = 0
        self.cache = None
        if rem.cache:
            from ..result_cache import JsonResultCache

            self.cache = JsonResultCache(rem.cache)
        self._headers = {}
        if rem.api_key_env:
            key = os.environ.get(rem.api_key_env)
            if not key:
                raise ValueError(f"reward.remote.api_key_env: environment variable {rem.api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    @classmethod
    def from_config(cls, cfg) -> RemoteRewardScorer:
        return cls(cfg.reward)

    def _key(self, prompt: str, response: str) -> str:
        from ..result_cache import digest

        return digest(prompt=prompt, response=response, **self.backend.cache_fields())

    def score(self, prompts: list[str], responses: list[str]) -> Scores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        results = run_coroutine(self._score_async(list(prompts), list(responses)))
        if isinstance(self.backend, VllmBackend):
            cut = sum(self.backend.encode(prompts, responses)[1])
            self.truncated += cut
            return self.backend.scores(results, cut)
        return self.backend.scores(results)

    async def _score_async(self, prompts: list[str], responses: list[str]) -> list[dict]:
        import httpx2

        n = len(prompts)
        self.stats.samples += n
        keys = [self._key(p, r) for p, r in zip(prompts, responses)] if self.cache is not None else [None] * n
        results: list[dict | None] = [self.cache.get(k) if k else None for k in keys]
        self.stats.cache_hits += sum(r is not None for r in results)
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return results  # type: ignore[return-value]
        bs = self.cfg.batch_size
        batches = [todo[s: s + bs] for s in range(0, len(todo), bs)]
        sem = asyncio.Semaphore(self.cfg.concurrency)
        outage = {"since": None}
        timeout = httpx2.Timeout(self.cfg.timeout)
        async with httpx2.AsyncClient(timeout=timeout, headers=self._headers) as client:

            async def one(batch: list[int]) -> None:
                body = self.backend.body([prompts[i] for i in batch], [responses[i] for i in batch])
                where = f"reward server {self.label}"
                t_first, tries = time.monotonic(), [0]

                def before_sleep(state) -> None:
                    self.stats.retries += 1
                    tries[0] += 1
                    if outage["since"] is None:
                        outage["since"] = time.monotonic()
                        self.stats.outages += 1
                        exc = state.outcome.exception()
                        from ..outputs import console

                        console.print(f"[yellow]{where}: {type(exc).__name__}: {str(exc)[:200] or 'no detail'}; "
                                      f"retrying (at least {self.cfg.max_retries} times, for up to "
                                      f"{self.cfg.wait_for_server_s:g} s: reward.remote.wait_for_server_s)[/]",
                                      highlight=False)

                try:
                    async for attempt in retrying(self.cfg, _retryable, before_sleep):
                        with attempt:
                            data = await self._post(client, sem, body)
                except Exception as exc:  # noqa: BLE001 - rephrased, naming the server
                    tried = (f"after {tries[0]} retries over {time.monotonic() - t_first:.0f} s"
                             if _retryable(exc) else "not retryable")
                    message = (f"{where}: scoring {len(batch)} samples failed ({tried}): "
                               f"{type(exc).__name__}: {str(exc)[:300] or 'no detail'}")
                else:
                    message = None
                if message is not None:  # raised outside the except block: no chained transport noise
                    raise RemoteRewardError(message)
                if outage["since"] is not None:
                    waited = time.monotonic() - outage["since"]
                    self.stats.waited_s += waited
                    outage["since"] = None
                    from ..outputs import console

                    console.print(f"[green]{where}: answering again after {waited:.1f} s[/]", highlight=False)
                for i, res in zip(batch, self.backend.parse(data, len(batch), where)):
                    results[i] = res
                    if self.cache is not None:
                        self.cache.put(keys[i], res, self.cfg.model)

            await gather_or_cancel(one(b) for b in batches)
        return results  # type: ignore[return-value]

    async def _post(self, client, sem: asyncio.Semaphore, body: dict):
        async with sem:  # a slot only while a request is in flight, not while backing off
            self.stats.requests += 1
            t0 = time.perf_counter()
            resp = await asyncio.wait_for(client.post(self.url, json=body), timeout=self.cfg.timeout * 1.5)
            self.stats.latencies.append(time.perf_counter() - t0)
        if resp.status_code >= 400:
            raise _StatusError(resp.status_code, resp.text, resp)
        try:
            return resp.json()
        except ValueError as exc:
            raise _RetryableBody(f"response body is not JSON ({exc})") from None

    def stats_summary(self) -> dict:
        return self.stats.summary()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


# ----------------------------------------------------------------------------- serving with vLLM
def vllm_server_args(reward_path: str | Path, model: str, *, port: int = 8000, host: str = "127.0.0.1",
                     dtype: str = "auto", max_model_len: int | None = None, output: str = "hidden") -> list[str]:
    """The arguments of `python -m vllm.entrypoints.openai.api_server` that serve what
    reward.remote.backend=vllm expects: for output=hidden a varpo ensemble folder's backbone as an
    embedding model whose pooling is the ensemble's (LAST or MEAN, unnormalised); for output=scores
    a sequence-classification model folder with raw (not sigmoid/softmax) scores."""
    path = Path(reward_path).expanduser()
    if output == "hidden":
        conf = json.loads((path / "config.json").read_text())
        pooling = {"last": "LAST", "mean": "MEAN"}[conf.get("pooling", "last")]
        args = ["--model", str(path / conf.get("backbone", "backbone")), "--tokenizer", str(path),
                "--runner", "pooling", "--convert", "embed",
                "--pooler-config", json.dumps({"seq_pooling_type": pooling, "use_activation": False})]
    else:
        args = ["--model", str(path), "--runner", "pooling",
                "--pooler-config", json.dumps({"seq_pooling_type": "LAST", "use_activation": False})]
    args += ["--served-model-name", model, "--host", host, "--port", str(port), "--dtype", dtype]
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    return args


def main() -> None:
    import argparse
    import shlex

    ap = argparse.ArgumentParser(description="print the vLLM server command for reward.remote.backend=vllm")
    ap.add_argument("--reward-path", required=True)
    ap.add_argument("--model", required=True, help="the name to serve it under (reward.remote.model)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--output", choices=("hidden", "scores"), default="hidden")
    a = ap.parse_args()
    args = vllm_server_args(a.reward_path, a.model, port=a.port, host=a.host, dtype=a.dtype,
                            max_model_len=a.max_model_len, output=a.output)
    print(shlex.join(["python", "-m", "vllm.entrypoints.openai.api_server", *args]))


if __name__ == "__main__":
    main()
