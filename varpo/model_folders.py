"""What the model paths of a config must hold, checked before any engine starts, each problem
said in one line naming the config field and the path (never a traceback from deep inside
transformers: "Repo id must be in the form ...", "install sentencepiece or tiktoken").

A path is a local folder, or a model name (`org/name`) found in the local Hugging Face cache;
the checks never go to the network. The config itself is read by the check
`varpo estimate-memory` uses (`varpo.memory.load_hf_config`): one home for it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


class ModelPathError(ConfigError):
    """A model path in the config that cannot be used, phrased for the user (field, path, why)."""


@dataclass
class ModelFolder:
    name: str  # what from_pretrained is given
    folder: Path  # where its files are on disk
    config: object  # its transformers PretrainedConfig


def _name_shaped(text: str) -> bool:
    """A string that can only mean a hub model name: `name` or `org/name`, whose first part is not
    a folder here (then `runs/missing` is a missing folder, not a model to look up online)."""
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or not text.strip():
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(text)
    except Exception:  # HFValidationError: not a valid repo id, so a path
        return False
    return "/" not in text or not Path(text.split("/", 1)[0]).exists()


def locate(path: str, field: str) -> tuple[str, Path | None]:
    """(name for from_pretrained, the folder holding its files) of a model path; ModelPathError
    when there is no such folder and no such model in the local cache."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        return str(p), p
    if p.exists():
        raise ModelPathError(f"{field}: {path} is a file; expected an HF model folder (with config.json)")
    if _name_shaped(str(path)):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(path), "config.json")
        if isinstance(cached, str):
            return str(path), Path(cached).parent
        # never a download from here: a typo'd folder would otherwise wait on the network for minutes
        raise ModelPathError(f"{field}: {path}: no such folder, and no model of that name in the local Hugging Face "
                             f"cache (models load from folders or the cache; `hf download {path}` fetches one)")
    raise ModelPathError(f"{field}: {path}: no such folder (expected an HF model folder with config.json, or a model "
                         "name in the local Hugging Face cache)")


def _architectures(conf) -> list[str]:
    return list(getattr(conf, "architectures", None) or [])


def check_model(path: str, field: str, kind: str = "causal_lm") -> ModelFolder:
    """An HF model folder (or cached name) with a readable config and weights. kind: causal_lm (a
    policy), backbone (any model whose trunk is used), sequence_classifier (a scalar reward model:
    *ForSequenceClassification with one label)."""
    from .memory import load_hf_config

    name, folder = locate(path, field)
    # after locate: a missing folder is refused before anything imports torch (varpo.reward does)
    from .reward.sequence_classifier import is_sequence_classifier

    conf = load_hf_config(folder, field)
    if not (any((folder / w).is_file() for w in WEIGHT_FILES) or any(folder.glob("*.safetensors"))):
        raise ModelPathError(f"{field}: {path} has a config.json but no weights ({', '.join(WEIGHT_FILES[:3])}, "
                             "...): an incomplete download or copy?")
    archs = _architectures(conf)
    if kind == "causal_lm" and is_sequence_classifier(conf):
        raise ModelPathError(f"{field}: {path} is a sequence-classification model ({archs[0]}), not a causal LM: "
                             "a reward model? (reward.type=sequence_classifier with reward.path)")
    if kind == "sequence_classifier":
        if not is_sequence_classifier(conf):
            what = f"a {archs[0]}" if archs else f"a {conf.model_type} model with no architectures entry"
            raise ModelPathError(f"{field}: {path} is {what}, not a sequence-classification reward model "
                                 "(AutoModelForSequenceClassification with num_labels 1); train a reward ensemble "
                                 f"on it instead: varpo train-rm --set reward_training.backbone_path={path}")
        if conf.num_labels != 1:
            raise ModelPathError(f"{field}: {path} has num_labels={conf.num_labels} (a classifier); a reward model "
                                 "gives one scalar (num_labels 1)")
    return ModelFolder(name, folder, conf)


def check_tokenizer(path: str, field: str, chat_template_for: str | None = None):
    """The tokenizer at `path`, loaded; `chat_template_for`: why a chat template is needed (it is
    then an error when the tokenizer has none)."""
    name, folder = locate(path, field)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelPathError(f"{field}: {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...); "
                             "copy the tokenizer into it or name one with model.tokenizer_path")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))  # the files on disk: no network
    except Exception as exc:  # transformers raises many kinds for unreadable tokenizers
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelPathError(f"{field}: {path}: the tokenizer cannot be loaded ({type(exc).__name__}: {first})") from None
    if chat_template_for and not getattr(tok, "chat_template", None):
        raise ModelPathError(f"{field}: the tokenizer of {path} has no chat template, which {chat_template_for} "
                             "needs; name a tokenizer that has one (model.tokenizer_path)")
    return tok


def check_ensemble_folder(path: str, field: str = "reward.path") -> str:
    """A reward-ensemble folder written by `varpo train-rm` (heads or deep layout); returns its
    model_type. Names what the folder is instead when it is an HF model rather than an ensemble."""
    import json

    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise ModelPathError(f"{field}: {path}: no such folder (expected a reward-ensemble folder written by "
                             "`varpo train-rm`: OUT/reward_model)")
    conf_file = p / "config.json"
    if not conf_file.is_file():
        raise ModelPathError(f"{field}: {path} has no config.json (expected a reward-ensemble folder written by "
                             "`varpo train-rm`: OUT/reward_model)")
    try:
        conf = json.loads(conf_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPathError(f"{field}: {conf_file} is not readable JSON ({exc})") from None
    from .reward.deep import MEMBERS_DIR
    from .reward.ensemble import HEADS_NAME
    from .reward.load import FOLDER_KINDS  # the kinds of folder varpo writes (torch is loaded by now anyway)
    from .reward.model import BACKBONE_DIR, MODEL_TYPE

    mtype = conf.get("model_type")
    if mtype not in FOLDER_KINDS:
        archs = conf.get("architectures") or []
        if any(str(a).endswith("ForSequenceClassification") for a in archs):
            raise ModelPathError(f"{field}: {path} is a sequence-classification reward model ({archs[0]}), not a "
                                 "reward ensemble: set reward.type=sequence_classifier to use it as the reward "
                                 "(σ² = 0), or train heads on it: varpo train-rm --set "
                                 f"reward_training.backbone_path={path}")
        what = f"an HF {archs[0]} folder" if archs else f"a folder of model_type {mtype!r}"
        raise ModelPathError(f"{field}: {path} is {what}, not a reward ensemble; train one on it with `varpo "
                             f"train-rm --set reward_training.backbone_path={path}`")
    if not (p / HEADS_NAME).is_file():
        raise ModelPathError(f"{field}: {path} has no {HEADS_NAME} (an interrupted `varpo train-rm`?)")
    sub = p / BACKBONE_DIR if mtype == MODEL_TYPE else p / MEMBERS_DIR / "00"  # one trunk, or a deep ensemble's first
    check_model(str(sub), f"{field} ({sub.relative_to(p)}/)", "backbone")
    check_tokenizer(str(p), field)
    return mtype
