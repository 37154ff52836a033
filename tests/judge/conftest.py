"""A real chat-completions judge server on 127.0.0.1 (random port) and fast-failing judge configs."""
import pytest

from varpo.config.judge import JudgeConfig
from varpo.judge.local_server import JudgeServer


@pytest.fixture
def server():
    with JudgeServer(delay_s=1.0, retry_after="1") as srv:
        yield srv


def fast_config(base_url: str, tmp_path, **kw) -> JudgeConfig:
    """Small timeouts and backoffs so fault tests take fractions of a second."""
    base = {"judges": [{"base_url": base_url, "model": "judge-a"}], "cache": str(tmp_path / "cache.sqlite"),
            "timeout": 0.4, "backoff_base": 0.01, "backoff_max": 0.05, "max_retries": 3, "max_reasks": 2,
            "concurrency": 4}
    base.update(kw)
    return JudgeConfig(**base)


@pytest.fixture
def make_config(tmp_path):
    return lambda base_url, **kw: fast_config(base_url, tmp_path, **kw)
