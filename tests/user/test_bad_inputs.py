"""One line, never a traceback, for every bad path, data file, value or output folder a user can
give: each case exits 2 with a message naming the field (or file) and the path, and nothing is
written or overwritten. The contract from outside: `varpo train-ppo --set model.policy_path=<a
folder that does not exist>` fails before torch or DeepSpeed are even imported, leaving no
output folder; a policy of one's own with no reward named fails naming reward.path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import ConfigError

from .conftest import save_policy


def snapshot(root) -> dict:
    """Every file under `root` with its size and modification time (empty when root is absent)."""
    if not os.path.exists(root):
        return {}
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def refused(args, tmp_path, out=None) -> str:
    """Run `varpo ARGS --out OUT` in-process: assert a ConfigError (the CLI's exit 2) and that OUT
    is as it was (absent if it was); return the message."""
    out = out or tmp_path / "out"
    before = snapshot(out)
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert isinstance(res.exception, ConfigError), (res.exit_code, res.output, res.exception)
    assert snapshot(out) == before, "the refused command wrote into its output folder"
    assert "\n" not in str(res.exception).strip() or "invalid configuration" in str(res.exception)
    return str(res.exception)


def ppo(*overrides):
    return ["train-ppo", *[x for o in overrides for x in ("--set", o)]]


# ----------------------------------------------------------------------------- the contract
CONTRACT = r"""
import atexit, sys
atexit.register(lambda: print("IMPORTED", "torch" in sys.modules, "deepspeed" in sys.modules, file=sys.stderr))
sys.argv = ["varpo"] + sys.argv[1:]
from varpo.cli import main
main()
"""


def test_missing_policy_fails_at_once_in_one_line_and_writes_nothing(tmp_path):
    out, missing = tmp_path / "run", tmp_path / "no" / "such" / "policy"
    proc = subprocess.run([sys.executable, "-c", CONTRACT, "train-ppo", "--set", f"model.policy_path={missing}",
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "60"})  # a narrow terminal must not wrap the line
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "IMPORTED False False"  # refused before torch (and DeepSpeed) were imported
    (msg,) = lines[:-1]
    assert msg.startswith("error: model.policy_path: ") and str(missing) in msg and "no such folder" in msg
    assert not out.exists()


def test_own_policy_without_reward_names_reward_path(user_models, tmp_path):
    msg = refused(ppo(f"model.policy_path={user_models['policy']}"), tmp_path)
    assert msg.startswith("reward.path: not set, and the policy is your own")
    assert user_models["policy"] in msg and "reward.type=sequence_classifier" in msg


# ----------------------------------------------------------------------------- model folders
def _variants(user_models, root):
    """Broken copies of the user's model folders, one per way a folder can be wrong."""
    p = user_models["policy"]
    cases = {}
    no_config = root / "no_config"
    shutil.copytree(p, no_config)
    (no_config / "config.json").unlink()
    no_weights = root / "no_weights"
    shutil.copytree(p, no_weights)
    (no_weights / "model.safetensors").unlink()
    no_tokenizer = root / "no_tokenizer"
    shutil.copytree(p, no_tokenizer)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tokenizer / f).unlink(missing_ok=True)
    bad_tokenizer = root / "bad_tokenizer"
    shutil.copytree(p, bad_tokenizer)
    (bad_tokenizer / "tokenizer.json").write_text("{not json")
    a_file = root / "weights.bin"
    a_file.write_bytes(b"\0" * 8)
    cases.update(no_config=no_config, no_weights=no_weights, no_tokenizer=no_tokenizer, bad_tokenizer=bad_tokenizer,
                 a_file=a_file)
    return cases


POLICY_CASES = {
    "missing": ("{root}/gone", "model.policy_path: {path}: no such folder"),
    "a_file": (None, "model.policy_path: {path} is a file; expected an HF model folder"),
    "no_config": (None, "model.policy_path: folder {path} has no config.json"),
    "no_weights": (None, "model.policy_path: {path} has a config.json but no weights"),
    "no_tokenizer": (None, "model.policy_path: {path} has no tokenizer files"),
    "bad_tokenizer": (None, "model.policy_path: {path}: the tokenizer cannot be loaded"),
    "reward_model": (None, "model.policy_path: {path} is a sequence-classification model "
                           "(LlamaForSequenceClassification), not a causal LM"),
    "hub_name_not_cached": ("nobody/no-such-model", "model.policy_path: {path}: no such folder, and no model of "
                                                    "that name in the local Hugging Face cache"),
}


@pytest.mark.parametrize("case", sorted(POLICY_CASES))
def test_bad_policy_folder(case, user_models, tmp_path):
    variants = _variants(user_models, tmp_path)
    given, want = POLICY_CASES[case]
    path = (given.format(root=tmp_path) if given else
            user_models[case] if case in user_models else str(variants[case]))
    msg = refused(ppo(f"model.policy_path={path}", "reward.type=sequence_classifier",
                      f"reward.path={user_models['reward_model']}"), tmp_path)
    assert msg.startswith(want.format(path=path)), msg


def test_chat_template_asked_of_a_tokenizer_without_one(user_models, tmp_path):
    msg = refused(ppo(f"model.policy_path={user_models['policy_no_template']}", "data.chat_template=true",
                      "reward.type=sequence_classifier", f"reward.path={user_models['reward_model']}"), tmp_path)
    assert msg.startswith(f"model.policy_path: the tokenizer of {user_models['policy_no_template']} has no chat "
                          "template, which data.chat_template=true needs")


def test_missing_critic(user_models, tmp_path):
    msg = refused(ppo(f"model.policy_path={user_models['policy']}", f"model.critic_path={tmp_path}/critic",
                      "reward.type=sequence_classifier", f"reward.path={user_models['reward_model']}"), tmp_path)
    assert msg.startswith(f"model.critic_path: {tmp_path}/critic: no such folder")


REWARD_CASES = {
    "lm_as_ensemble": (["reward.path={policy}"], "reward.path: {policy} is an HF LlamaForCausalLM folder, not a "
                                                 "reward ensemble; train one on it"),
    "rm_as_ensemble": (["reward.path={rm}"], "reward.path: {rm} is a sequence-classification reward model "
                                             "(LlamaForSequenceClassification), not a reward ensemble: set "
                                             "reward.type=sequence_classifier"),
    "lm_as_classifier": (["reward.type=sequence_classifier", "reward.path={policy}"],
                         "reward.path: {policy} is a LlamaForCausalLM, not a sequence-classification reward model"),
    "two_labels": (["reward.type=sequence_classifier", "reward.path={clf}"],
                   "reward.path: {clf} has num_labels=2 (a classifier)"),
    "empty_ensemble": (["reward.path={empty}"], "reward.path: {empty} has no config.json"),
    "classifier_without_path": (["reward.type=sequence_classifier"],
                                "invalid configuration"),
    "classifier_with_variance_weighting": (["reward.type=sequence_classifier", "reward.path={rm}",
                                            "ppo.variance.weighting=batch_mean"], "invalid configuration"),
}


@pytest.mark.parametrize("case", sorted(REWARD_CASES))
def test_bad_reward(case, user_models, tmp_path):
    (tmp_path / "empty").mkdir()
    names = {"policy": user_models["policy"], "rm": user_models["reward_model"], "clf": user_models["classifier"],
             "empty": str(tmp_path / "empty")}
    sets, want = REWARD_CASES[case]
    msg = refused(ppo(f"model.policy_path={user_models['policy']}", *[s.format(**names) for s in sets]), tmp_path)
    assert msg.startswith(want.format(**names)), msg
    if case == "classifier_without_path":
        assert "reward.type=sequence_classifier needs reward.path" in msg
    if case == "classifier_with_variance_weighting":
        assert "one reward model gives σ² = 0" in msg


def test_pairs_without_a_reward_model(tmp_path, user_data):
    msg = refused(ppo(f"data.pairs_path={user_data['conv_pairs']}"), tmp_path)
    assert msg.startswith("reward.path: not set, with preference pairs of your own")


# ----------------------------------------------------------------------------- data, before DeepSpeed
def _ppo_with_rm(user_models, *extra):
    return ppo(f"model.policy_path={user_models['policy']}", "reward.type=sequence_classifier",
               f"reward.path={user_models['reward_model']}", *extra)


def test_binary_prompt_file_is_named(user_models, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(128, 256)))
    msg = refused(_ppo_with_rm(user_models, f"data.prompts_path={bad}"), tmp_path)
    assert msg.startswith(f"{bad}, line 1: not UTF-8 text (byte 0x8b")


def test_conversational_prompts_need_the_policys_template(user_models, user_data, tmp_path):
    msg = refused(ppo(f"model.policy_path={user_models['policy_no_template']}", "reward.type=sequence_classifier",
                      f"reward.path={user_models['reward_model']}", f"data.prompts_path={user_data['conv_prompts']}"),
                  tmp_path)
    assert msg.startswith(f"{user_data['conv_prompts']}: conversational rows (lists of role/content messages) are "
                          f"rendered with the chat template of model.policy_path ({user_models['policy_no_template']})")


def test_bad_pair_row_in_ppo_prompts_from_pairs(user_models, tmp_path):
    rows = [{"chosen": "\n\nHuman: what\n\nAssistant: good", "rejected": "\n\nHuman: what\n\nAssistant: bad"},
            {"chosen": "blue sky", "rejected": "green grass"}]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    msg = refused(_ppo_with_rm(user_models, f"data.pairs_path={path}"), tmp_path)
    assert msg.startswith(f"{path}, line 2, field 'chosen'/'rejected': no prompt column, and chosen and rejected "
                          "share no start")


def test_eval_every_without_held_out_prompts(user_models, user_data, tmp_path):
    msg = refused(_ppo_with_rm(user_models, f"data.prompts_path={user_data['conv_prompts']}", "ppo.eval_every=1"),
                  tmp_path)
    assert msg.startswith("ppo.eval_every: evaluation needs held-out prompts")


def test_train_rm_bad_backbone_and_untemplated_conversations(user_models, user_data, tmp_path):
    msg = refused(["train-rm", "--set", f"reward_training.backbone_path={tmp_path}/none",
                   "--set", f"data.pairs_path={user_data['conv_pairs']}"], tmp_path)
    assert msg.startswith(f"reward_training.backbone_path: {tmp_path}/none: no such folder")
    msg = refused(["train-rm", "--set", f"reward_training.backbone_path={user_models['policy_no_template']}",
                   "--set", f"data.pairs_path={user_data['conv_pairs']}"], tmp_path)
    assert msg.startswith(f"{user_data['conv_pairs']}: conversational rows") and \
        f"reward_training.backbone_path ({user_models['policy_no_template']})" in msg


# ----------------------------------------------------------------------------- output folders
def test_out_is_a_file(user_models, tmp_path):
    f = tmp_path / "out.txt"
    f.write_text("mine")
    msg = refused(_ppo_with_rm(user_models), tmp_path, out=f)
    assert msg == f"--out {f}: exists and is a file; expected a folder (or a path to create one)"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    msg = refused(["score", "--input", str(rows), "--set", "reward.type=sequence_classifier",
                   "--set", f"reward.path={user_models['reward_model']}"], tmp_path, out=f)
    assert msg.startswith(f"--out {f}: exists and is a file") and f.read_text() == "mine"


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("override,field,why", [
    ("ppo.kl.beta=inf", "ppo.kl.beta", "Input should be a finite number"),
    ("ppo.actor_lr=.nan", "ppo.actor_lr", "Input should be a finite number"),
    ("reward.oracle.sigma_max=-.inf", "reward.oracle.sigma_max", "Input should be a finite number"),
    ("ppo.kl.beta=yes", "ppo.kl.beta", "expected a number, got the boolean true"),
    ("ppo.steps=on", "ppo.steps", "expected a number, got the boolean true"),
    ("deepspeed.zero_stage=false", "deepspeed.zero_stage", "expected a number, got the boolean false"),
    ("ppo.score_clip=true", "ppo.score_clip", "expected a number, got the boolean true"),
])
def test_non_finite_and_boolean_numbers_are_refused(override, field, why, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    key, value = override.split("=", 1)
    *sections, leaf = key.split(".")
    tree: dict = {}
    node = tree
    for s in sections:
        node = node.setdefault(s, {})
    node[leaf] = value
    import yaml

    cfg_file.write_text(yaml.safe_dump(tree).replace(f"'{value}'", value))  # unquoted, as a user writes it
    for args in (["config", "check", str(cfg_file)], ["config", "check", str(tmp_path / "empty.yaml"),
                                                      "--set", override]):
        (tmp_path / "empty.yaml").write_text("")
        res = CliRunner().invoke(app, args)
        assert isinstance(res.exception, ConfigError), res.output
        assert f"{field}: {why}" in str(res.exception)


def test_booleans_stay_booleans_and_numbers_numbers():
    from varpo.config import load_config

    cfg = load_config(None, ["model.lora.enabled=yes", "ppo.kl.beta=0.25", "deepspeed.zero_stage=2",
                             "generation.vllm.enforce_eager=off"])
    assert cfg.model.lora.enabled is True and cfg.ppo.kl.beta == 0.25 and cfg.deepspeed.zero_stage == 2
    assert cfg.generation.vllm.enforce_eager is False


def test_undecodable_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"ppo:\n  steps: 3\n\xff\xfe")
    res = CliRunner().invoke(app, ["config", "check", str(f)])
    assert isinstance(res.exception, ConfigError)
    assert str(res.exception).startswith(f"{f}: not UTF-8 text (byte 0xff")


def test_empty_config_means_no_config(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set yet\n\n")
    a = CliRunner().invoke(app, ["config", "show", "-c", str(empty)])
    b = CliRunner().invoke(app, ["config", "show"])
    assert a.exit_code == b.exit_code == 0
    assert a.stdout == b.stdout and "steps: 30" in a.stdout  # the embedded task's, not the schema's 20
    assert "empty config file: using the defaults" in a.stderr


def test_launcher_reports_a_bad_path_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "launch/train_ppo.py", "--set", f"model.policy_path={tmp_path}/none",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: model.policy_path: {tmp_path}/none: no such folder")
    assert "Traceback" not in proc.stderr and not out.exists()


def test_user_policy_folder_helper_is_a_policy(tmp_path):
    """The fixtures' folders are what the checks accept (so every refusal above is for its reason)."""
    from varpo.model_folders import check_model, check_tokenizer

    p = save_policy(tmp_path / "p")
    assert check_model(p, "model.policy_path").config.model_type == "llama"
    assert check_tokenizer(p, "model.policy_path", "a chat").chat_template
