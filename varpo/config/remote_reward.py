"""reward.type=remote: the reward model served apart from the trainer (docs/remote_reward.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section


class RemoteRewardConfig(Section):
    """Where a remote reward comes from and how the client talks to it. The retry and timeout fields
    mean what the judge client's do (varpo/http_retry.py serves both)."""

    backend: Literal["direct", "vllm"] = Field(
        "direct", description="direct: any endpoint speaking varpo's reward protocol (POST {base_url}/rewards, "
        "docs/remote_reward.md; `python -m varpo.reward.server` is one) returns reward and σ² itself; vllm: a vLLM "
        "server running the backbone with its pooling API (POST {base_url}/pooling), varpo tokenizes and applies "
        "the ensemble's heads from reward.path")
    base_url: str | None = Field(None, description="direct: e.g. http://host:8001/v1; vllm: the server's root, "
                                 "e.g. http://host:8000")
    model: str | None = Field(None, description="the served model's name (sent with each request, checked in each "
                              "answer, and part of the cache key: change it when the model changes)")
    output: Literal["hidden", "scores"] = Field(
        "hidden", description="vllm: what the server pools: hidden = the backbone's last hidden state (served with "
        "--convert embed and seq_pooling_type LAST or MEAN as the ensemble's pooling; the K heads of reward.path are "
        "applied in varpo); scores = the K outputs of a sequence-classification model (--convert classify), one per "
        "ensemble member (s and σ² over them, σ² = 0 for K = 1)")
    batch_size: int = Field(16, ge=1, description="samples per request")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    timeout: float = Field(120.0, gt=0, description="seconds per request before it counts as timed out (then retried)")
    max_retries: int = Field(5, ge=0, description="retries per request on 429, 408/409, 5xx, timeouts, refused or "
                             "dropped connections")
    backoff_base: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles per retry (with jitter)")
    backoff_max: float = Field(30.0, ge=0, description="cap of the exponential backoff delay in seconds")
    max_retry_after: float = Field(120.0, ge=0, description="longest server-requested Retry-After honoured")
    wait_for_server_s: float = Field(
        600.0, ge=0, description="how long a request keeps retrying (beyond max_retries) while the server is down or "
        "failing: a restarted server is picked up and the run goes on; after this the run stops with an error naming "
        "the server")
    cache: str | None = Field("~/.cache/varpo/rewards.sqlite", description="SQLite cache of per-sample results keyed by "
                              "(prompt, response, model, backend settings); null disables")
    api_key_env: str | None = Field(None, description="environment variable holding a bearer token for the server "
                                    "(None: no Authorization header)")

    def check(self, reward_path: str | None) -> None:
        """What reward.type=remote needs, checked before any model is built (raises ValueError naming the field)."""
        missing = [f"reward.remote.{n}" for n in ("base_url", "model") if not getattr(self, n)]
        if missing:
            raise ValueError(f"reward.type=remote needs {' and '.join(missing)} (the reward server's address and "
                             "the name of the model it serves)")
        if self.backend == "vllm" and not reward_path:
            raise ValueError("reward.remote.backend=vllm needs reward.path: the ensemble folder whose tokenizer "
                             "and heads varpo applies (its backbone's weights stay on the server)")
