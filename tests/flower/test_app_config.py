"""Run and node settings of the Flower apps, and the app folder `fedspear flower-config` writes."""

from __future__ import annotations

import sys

import pytest
import yaml

from fedspear.cli import main
from fedspear.config import ConfigError, load_config
from fedspear.flower.app_config import NodeSettings, ServerSettings, app_pyproject, write_flower_app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.flower


def _run_config(pyproject: str) -> dict:
    return tomllib.loads(pyproject)["tool"]["flwr"]["app"]["config"]


def test_app_pyproject_carries_the_resolved_config():
    cfg = load_config(None, ["fl.rounds=3", "data.num_clients=6", "lora.target_modules=[q_proj,v_proj]",
                             "output_dir=/runs/it's"])
    doc = tomllib.loads(app_pyproject(cfg, resume=True, round_timeout=30))
    assert doc["tool"]["flwr"]["app"]["components"] == {"serverapp": "fedspear.flower.server_app:app",
                                                        "clientapp": "fedspear.flower.client_app:app"}
    assert doc["project"]["dependencies"] == ["flwr==1.42.0"]
    run_config = doc["tool"]["flwr"]["app"]["config"]
    assert run_config["resume"] is True and run_config["round-timeout"] == 30.0
    settings = ServerSettings.from_run_config(run_config)
    assert settings.config().to_dict() == cfg.to_dict()


def test_config_with_triple_quotes_still_round_trips():
    cfg = load_config(None, ["output_dir=/runs/a'''b'"])
    settings = ServerSettings.from_run_config(_run_config(app_pyproject(cfg)))
    assert settings.config().output_dir == "/runs/a'''b'"


def test_server_overrides_apply_on_top():
    cfg = load_config(None, ["fl.rounds=3"])
    run_config = _run_config(app_pyproject(cfg))
    run_config["overrides"] = "fl.rounds=5 'output_dir=/tmp/a b'"
    settings = ServerSettings.from_run_config(run_config)
    assert settings.config().fl.rounds == 5 and settings.config().output_dir == "/tmp/a b"
    with pytest.raises(ConfigError, match="fedspear-config"):
        ServerSettings.from_run_config({"overrides": ""})


def test_node_settings():
    node = NodeSettings.from_node_config({"partition-id": 2, "num-partitions": 3})
    assert (node.client_id, node.partition_id, node.num_partitions) == (2, 2, 3)
    node.check(3)
    with pytest.raises(ConfigError, match="num-partitions=3"):
        node.check(4)
    own = NodeSettings.from_node_config({"client-id": 1, "overrides": "data.path=/data/mine feedback.provider=none"})
    assert own.partition_id is None and own.client_id == 1
    cfg = own.apply(load_config(None, ["data.num_clients=2", "fl.clients_per_round=2"]))
    assert cfg.data.path == "/data/mine" and cfg.feedback.provider == "none"
    with pytest.raises(ConfigError, match="outside"):
        own.check(1)
    with pytest.raises(ConfigError, match="not node-local"):
        NodeSettings.from_node_config({"client-id": 0, "overrides": "spear.lambda_lose=0"})
    with pytest.raises(ConfigError, match="partition-id"):
        NodeSettings.from_node_config({})


def test_write_flower_app_makes_paths_absolute_and_writes_the_connection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    cfg = load_config(None, ["output_dir=runs/x", "data.path=data", "model.model_name=org/not-a-local-folder"])
    out = write_flower_app(cfg, tmp_path / "app", superlink="10.0.0.5:9093", root_certificates="certs/ca.crt")
    assert (cfg.output_dir, cfg.data.path) == ("runs/x", "data")  # the caller's config is not written
    run_config = _run_config((out / "pyproject.toml").read_text())
    sent = yaml.safe_load(run_config["fedspear-config"])
    assert sent["output_dir"] == str(tmp_path / "runs" / "x") and sent["data"]["path"] == str(tmp_path / "data")
    assert sent["model"]["model_name"] == "org/not-a-local-folder"
    conn = tomllib.loads((out / ".flwr" / "config.toml").read_text())["superlink"]
    assert conn["default"] == "fedspear"
    assert conn["fedspear"] == {"address": "10.0.0.5:9093", "root-certificates": str(tmp_path / "certs" / "ca.crt")}


def test_flower_config_command(tmp_path, capsys):
    out = tmp_path / "app"
    assert main(["flower-config", "--out", str(out), "--superlink", "127.0.0.1:7000", "--round-timeout", "60",
                 "fl.rounds=2", f"output_dir={tmp_path / 'run'}"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    run_config = _run_config((out / "pyproject.toml").read_text())
    assert run_config["round-timeout"] == 60.0
    assert yaml.safe_load(run_config["fedspear-config"])["fl"]["rounds"] == 2
    assert tomllib.loads((out / ".flwr" / "config.toml").read_text())["superlink"]["fedspear"] == {
        "address": "127.0.0.1:7000", "insecure": True}
    assert main(["flower-config", "--out", str(out), "fl.nope=1"]) == 2


def test_flower_config_selects_the_store_backed_client_app(tmp_path, capsys):
    out = tmp_path / "app"
    assert main(["flower-config", "--out", str(out), "--clients", "served", f"output_dir={tmp_path / 'run'}"]) == 0
    components = tomllib.loads((out / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"] == "fedspear.flower.served_client_app:app"
    assert "state-dir=" in capsys.readouterr().err  # the printed SuperNode command names the node config
    with pytest.raises(ConfigError, match="unknown client app 'people'"):
        app_pyproject(load_config(None, []), clients="people")
