"""Checks before any work (issue 23, classes 2 and 3): a PEFT adapter given as ``model.model_name`` and
``lora.target_modules`` naming no module of the model are one line, exit 2, from `fedspear check` and `fedspear run`,
and `run` leaves no run folder behind."""

from __future__ import annotations

import json
import re

import pytest

from fedspear.cli import main
from fedspear.config import ConfigError, load_config


def _one_error_line(capsys) -> str:
    """The one error line on stderr; the run's INFO progress lines (the model's start line) may precede it, nothing
    else may (no traceback, no warning)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not re.match(r"\d\d:\d\d:\d\d INFO fedspear: ", line)]
    assert len(err) == 1, err
    assert err[0].startswith("fedspear: error: ")
    return err[0]


@pytest.fixture(scope="module")
def adapter_dir(tiny_qwen, tmp_path_factory):
    """A rank-8 PEFT LoRA adapter of the tiny Qwen2 model, saved as a user would save one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("user-adapter")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_qwen))
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    peft_model.save_pretrained(str(out))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_qwen)
    return out


def test_check_refuses_a_peft_adapter_folder_naming_its_base(adapter_dir, tiny_qwen, capsys):
    assert main(["check", f"model.model_name={adapter_dir}"]) == 2
    line = _one_error_line(capsys)
    assert line == (f"fedspear: error: model.model_name={adapter_dir} is a LoRA adapter (adapter_config.json); give "
                    f"its base model (base_model_name_or_path={tiny_qwen}); fedspear trains its own adapter on the "
                    "base model")


def test_run_refuses_a_peft_adapter_folder_before_any_work(adapter_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", f"model.model_name={adapter_dir}", f"output_dir={out}"]) == 2
    assert "is a LoRA adapter (adapter_config.json)" in _one_error_line(capsys)
    assert not out.exists()


def test_build_policy_refuses_a_peft_adapter(adapter_dir, tiny_qwen):
    """The served client and the Flower apps load through build_policy: they refuse it too."""
    from fedspear.models import build_policy

    cfg = load_config(None, [f"model.model_name={adapter_dir}", "model.device_map=cpu", "model.dtype=fp32"])
    with pytest.raises(ConfigError, match=rf"base_model_name_or_path={tiny_qwen}\)"):
        build_policy(cfg)


def test_check_refuses_lora_target_modules_that_name_no_module(tiny_qwen, capsys):
    assert main(["check", f"model.model_name={tiny_qwen}", "lora.target_modules=[q_proj,qkv]",
                 "lora.last_n_layers=2"]) == 2
    line = _one_error_line(capsys)
    assert line == ("fedspear: error: lora.target_modules: qkv is not a module of the last 2 layers "
                    "(lora.last_n_layers) of this model; available: down_proj, gate_proj, k_proj, o_proj, q_proj, "
                    "up_proj, v_proj")


def test_run_refuses_lora_target_modules_before_any_work(tiny_qwen, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", f"model.model_name={tiny_qwen}", "lora.target_modules=[attn]", f"output_dir={out}"]) == 2
    assert "lora.target_modules: attn is not a module" in _one_error_line(capsys)
    assert not out.exists()


def test_check_accepts_lora_target_modules_of_the_model(tiny_qwen, capsys):
    assert main(["check", f"model.model_name={tiny_qwen}", "lora.target_modules=[q_proj,v_proj]"]) == 0
    assert "- q_proj" in capsys.readouterr().out


def test_attach_lora_raises_the_same_one_line_error(tiny_qwen):
    """Where the model is loaded (a model not on this machine is checked only then) the error is the same."""
    from fedspear.models import build_policy

    cfg = load_config(None, [f"model.model_name={tiny_qwen}", "model.device_map=cpu", "model.dtype=fp32",
                             "lora.target_modules=[nope]", "lora.last_n_layers=1"])
    with pytest.raises(ConfigError, match=r"^lora.target_modules: nope is not a module of the last 1 layers"):
        build_policy(cfg)


def test_check_refuses_a_model_path_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["check", f"model.model_name={missing}"]) == 2
    assert _one_error_line(capsys) == (f"fedspear: error: model.model_name={missing}: no such folder; give a model "
                                       "folder or a Hugging Face model id such as Qwen/Qwen2.5-0.5B-Instruct")


def test_a_model_id_that_cannot_be_loaded_is_one_line_and_leaves_no_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # restored after the test (the run sets it for hf.offline=true)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "runs" / "x"
    assert main(["run", "model.model_name=nobody/no-such-model-xyz", "hf.offline=true", f"output_dir={out}"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("fedspear: error: model.model_name=nobody/no-such-model-xyz: cannot be loaded (")
    assert line.endswith("); give a model folder or a Hugging Face model id that is cached (hf.offline=true) or "
                         "reachable")
    assert list(tmp_path.glob("runs*")) == []  # neither the run folder nor the parent it made


def test_a_model_folder_that_also_holds_an_adapter_is_refused(adapter_dir, tiny_qwen, tmp_path, capsys):
    """transformers loads such a folder's model and attaches the adapter: the same silent mistraining."""
    import shutil

    both = tmp_path / "model-with-adapter"
    shutil.copytree(tiny_qwen, both)
    for f in adapter_dir.iterdir():
        shutil.copy(f, both / f.name)
    assert main(["check", f"model.model_name={both}"]) == 2
    assert _one_error_line(capsys).startswith(f"fedspear: error: model.model_name={both} is a LoRA adapter "
                                              f"(adapter_config.json); give its base model "
                                              f"(base_model_name_or_path={tiny_qwen})")


def test_a_model_folder_without_tokenizer_files_is_one_line_before_round_0(tiny_qwen, tmp_path, capsys):
    """transformers then builds an empty tokenizer, and round 0 died on a tensor of 0 elements."""
    import shutil

    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_qwen / name, bare / name)
    out = tmp_path / "run"
    assert main(["run", f"model.model_name={bare}", "model.device_map=cpu", f"output_dir={out}"]) == 2
    assert _one_error_line(capsys) == (f"fedspear: error: the tokenizer of {bare} turns text into no tokens "
                                       "(vocabulary of 1): the folder has no tokenizer files; set "
                                       "model.tokenizer_name to the model's tokenizer")
    assert not out.exists()
