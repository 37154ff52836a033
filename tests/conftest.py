"""Shared test setup: CPU DeepSpeed, quiet progress bars, a per-session cache folder."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("VARPO_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
