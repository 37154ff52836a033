"""Shared test setup: CPU DeepSpeed, quiet progress bars, a per-session cache folder."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("VARPO_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


@pytest.fixture(scope="session")
def testbed():
    """The default embedded testbed (TestbedConfig()), from the normal cache ($VARPO_CACHE or
    ~/.cache/varpo): built once (~1 min on 2 cores) and reused by every test and later session."""
    from varpo.config import TestbedConfig
    from varpo.testbed import build_testbed

    return build_testbed(TestbedConfig(), progress=False)
