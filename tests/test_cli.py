"""Tests for the fedspear command line, in-process (cli.main) and as a subprocess."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import fedspear
from fedspear import cli
from fedspear import log as log_module
from fedspear.config import Config, field_help
from fedspear.records import RunExistsError
from fedspear.tasks.base import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_fedspear_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """cli.main configures the "fedspear" logger; undo that so other tests see it untouched."""
    log = logging.getLogger("fedspear")
    level, handlers = log.level, list(log.handlers)
    monkeypatch.setattr(log_module, "_handler", None)
    yield
    log.setLevel(level)
    log.handlers[:] = handlers


def _subparser_names(parser: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return set(actions[0].choices)


def test_command_table_and_parser_are_in_sync() -> None:
    assert _subparser_names(cli.build_parser()) == set(cli.COMMANDS) == {
        "run", "check", "report", "make-base", "compare", "sweep", "flower-config", "serve", "train-local",
        "fetch-model"}


# --------------------------------------------------------------------------- check


def test_check_prints_the_resolved_yaml_with_the_override_applied(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "fl.rounds=3", "lora.target_modules=[q_proj,v_proj]"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# resolved from ") and out.splitlines()[0].endswith(
        "default.yaml + fl.rounds=3 + lora.target_modules=[q_proj,v_proj]")
    resolved = yaml.safe_load(out)
    assert resolved["fl"]["rounds"] == 3
    assert resolved["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert resolved["data"]["dataset"] == "world"  # no --config: the default preset


def test_check_accepts_a_preset_name_a_yaml_name_and_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    preset = REPO / "fedspear" / "configs" / "hellaswag-llama3.2-3b.yaml"
    for name in ("hellaswag-llama3.2-3b", "hellaswag-llama3.2-3b.yaml", str(preset)):
        assert cli.main(["check", "--config", name]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["fl"]["local_train_steps"] == 10


def test_overrides_may_follow_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "fl.rounds=4", "--config", "tiny-arc", "data.seed=9"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert (resolved["fl"]["rounds"], resolved["data"]["seed"], resolved["data"]["dataset"]) == (4, 9, "arc_challenge")


@pytest.mark.parametrize(("argv", "expected"), [
    (["check", "fl.round=3"], "fedspear: error: override: unknown key 'fl.round' (did you mean 'fl.rounds'?)"),
    (["check", "fl.rounds=abc"], "fedspear: error: override: fl.rounds: expected an integer, got 'abc'"),
    (["check", "algorithm.name=ppo"], "fedspear: error: algorithm.name: 'ppo' is not one of spear,"),
    (["check", "--config", "arc_qwen2.5-1.5b"],
     "fedspear: error: --config arc_qwen2.5-1.5b: no such file and no such preset "
     "(did you mean 'arc_challenge-qwen2.5-1.5b'?)"),
    (["check", "--list", "fl.rounds=3"], "fedspear: error: --list prints every key"),
    (["run", "--resume", "/no/such/run"], "fedspear: error: --resume /no/such/run: no such run folder"),
    (["run", "--resume", ".", "--config", "default"], "fedspear: error: --resume continues a run with its own"),
    (["report", "/no/such/run"], "fedspear: error: /no/such/run: no such run folder"),
])
def test_user_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected)


def test_check_list_prints_every_key_with_default_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(field_help())
    rounds = next(line for line in lines if line.startswith("fl.rounds "))
    assert rounds.split() == ["fl.rounds", "20", "federated", "rounds"]
    assert next(line for line in lines if line.startswith("model.tokenizer_name ")).split()[1] == "null"


def test_malformed_command_lines_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["frobnicate"], ["check", "--bogus"], ["make-base"], ["make-base", "--out", "x", "--preset", "huge"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedspear {fedspear.__version__}"


# --------------------------------------------------------------------------- commands with stand-in back ends


@pytest.fixture
def fake_simulator(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Replace fedspear.federation.simulator (which imports torch) with a recorder."""
    import fedspear.federation

    calls = types.SimpleNamespace(run=[], resume=[], error=None)

    def run(cfg: Config) -> Path:
        if calls.error is not None:
            raise calls.error
        calls.run.append(cfg)
        return Path(cfg.output_dir)

    def resume(run_dir: Path, overrides: list[str]) -> Path:
        calls.resume.append((run_dir, overrides))
        return run_dir

    module = types.ModuleType("fedspear.federation.simulator")
    module.run, module.resume = run, resume
    monkeypatch.setitem(sys.modules, "fedspear.federation.simulator", module)
    monkeypatch.setattr(fedspear.federation, "simulator", module, raising=False)
    return calls


def test_run_without_config_uses_the_default_preset(fake_simulator: types.SimpleNamespace,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "fl.rounds=2", "output_dir=runs/t"]) == 0
    (cfg,) = fake_simulator.run
    assert (cfg.data.dataset, cfg.fl.rounds, cfg.output_dir) == ("world", 2, "runs/t")
    assert capsys.readouterr().out.strip() == "runs/t"


def test_run_validates_before_starting(fake_simulator: types.SimpleNamespace) -> None:
    assert cli.main(["run", "fl.rounds=abc"]) == 2
    assert fake_simulator.run == []


def test_resume_passes_the_folder_and_overrides(fake_simulator: types.SimpleNamespace, tmp_path: Path) -> None:
    assert cli.main(["run", "--resume", str(tmp_path), "fl.rounds=9"]) == 0
    assert fake_simulator.resume == [(tmp_path, ["fl.rounds=9"])]


@pytest.mark.parametrize("error", [
    DataError("data.path /x does not exist"),
    RunExistsError("output folder runs/t already holds a run"),
    FileNotFoundError("model folder /m not found"),
])
def test_library_user_errors_become_one_line(fake_simulator: types.SimpleNamespace, error: Exception,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fake_simulator.error = error
    assert cli.main(["run"]) == 2
    assert capsys.readouterr().err == f"fedspear: error: {error}\n"


def test_other_errors_keep_their_traceback(fake_simulator: types.SimpleNamespace) -> None:
    fake_simulator.error = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["run"])


def test_a_foreign_class_named_like_a_user_error_is_not_one() -> None:
    foreign = type("DataError", (ValueError,), {"__module__": "somewhere_else"})
    assert not cli.is_user_error(foreign("x"))
    assert cli.is_user_error(DataError("x")) and cli.is_user_error(RunExistsError("x"))


def test_report_prints_the_report_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import fedspear.report

    monkeypatch.setattr(fedspear.report, "write_report", lambda run_dir: run_dir / "report.md")
    assert cli.main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")


def test_make_base_passes_its_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    calls = []
    module = types.ModuleType("fedspear.world_base")
    module.build_base = lambda out_dir, preset, seed: calls.append((out_dir, preset, seed)) or {}
    monkeypatch.setitem(sys.modules, "fedspear.world_base", module)
    monkeypatch.setattr(fedspear, "world_base", module, raising=False)
    assert cli.main(["make-base", "--out", str(tmp_path / "m"), "--preset", "tiny", "--seed", "3"]) == 0
    assert calls == [(tmp_path / "m", "tiny", 3)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")


@pytest.mark.parametrize(("flags", "level"), [([], logging.INFO), (["-v"], logging.DEBUG), (["-q"], logging.WARNING)])
def test_verbosity_sets_the_fedspear_log_level(capsys: pytest.CaptureFixture[str], flags: list[str],
                                               level: int) -> None:
    assert cli.main(["check", *flags]) == 0
    assert logging.getLogger("fedspear").level == level


# --------------------------------------------------------------------------- as a subprocess


def _fedspear(*args: str) -> subprocess.CompletedProcess[str]:
    script = REPO / ".venv" / "bin" / "fedspear"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "fedspear"]
    return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_subprocess_check_ok() -> None:
    done = _fedspear("check", "--config", "strategy_qa-qwen2.5-1.5b", "fl.rounds=3")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["fl"]["rounds"] == 3


@pytest.mark.parametrize(("args", "named"), [
    (("check", "fl.round=3"), "did you mean 'fl.rounds'?"),
    (("check", "fl.rounds=abc"), "fl.rounds: expected an integer"),
    (("check", "algorithm.name=ppo"), "algorithm.name: 'ppo' is not one of"),
])
def test_subprocess_errors_exit_2_without_traceback(args: tuple[str, ...], named: str) -> None:
    done = _fedspear(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("fedspear: error: ") and named in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_python_dash_m_fedspear_lists_keys() -> None:
    done = subprocess.run([sys.executable, "-m", "fedspear", "check", "--list"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(field_help())
