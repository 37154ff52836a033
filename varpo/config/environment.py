"""What this machine can run of a config's model features (flash attention, 4-bit bases), checked
before any model is built. Apart from the schema, which is validated without looking at the
machine, so that a cluster config still passes `varpo config check` on a laptop."""
from __future__ import annotations

from .core import ConfigError

BNB_CPU_MIN = (0, 50)  # the oldest bitsandbytes whose CPU backend was checked to run nf4 layers here (0.50.2)


def _version_tuple(text: str) -> tuple[int, ...]:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def check_environment(cfg) -> None:
    """Refuse, before any model is built, model features this machine cannot run: raises a
    ConfigError naming the field and what is missing. (The schema is validated without looking at
    the machine, so a cluster config still passes `varpo config check` on a laptop.)"""
    import importlib.metadata
    import importlib.util

    import torch

    m, problems = cfg.model, []
    cuda = torch.cuda.is_available()
    if m.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            problems.append("model.attn_implementation=flash_attention_2: the flash-attn package is not installed "
                            "(pip install flash-attn, or varpo[gpu]); use sdpa or eager")
        if not cuda:
            problems.append("model.attn_implementation=flash_attention_2: needs a CUDA GPU and this machine has none "
                            "(flash-attn has no CPU kernels); use sdpa or eager")
    if m.quantization.load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("model.quantization.load_in_4bit=true: the bitsandbytes package is not installed "
                            f"(pip install 'bitsandbytes>={BNB_CPU_MIN[0]}.{BNB_CPU_MIN[1]}', or varpo[gpu])")
        elif not cuda:
            have = importlib.metadata.version("bitsandbytes")
            if _version_tuple(have) < BNB_CPU_MIN:
                problems.append(f"model.quantization.load_in_4bit=true on CPU: bitsandbytes {have} predates "
                                f"{BNB_CPU_MIN[0]}.{BNB_CPU_MIN[1]}, the first whose CPU 4-bit backend varpo was checked "
                                f"with; need bitsandbytes>={BNB_CPU_MIN[0]}.{BNB_CPU_MIN[1]} or a CUDA GPU")
    if problems:
        raise ConfigError("this machine cannot run the configured model:\n  " + "\n  ".join(problems))
