"""Settings of the fedspear Flower apps, and the Flower app folder that ``fedspear flower-config`` writes.

Run config (``[tool.flwr.app.config]`` of the app's pyproject.toml, overridable with ``flwr run --run-config``),
read by the ServerApp:

    fedspear-config   the run's resolved fedspear config (YAML text); the server sends it to every client
    overrides         more fedspear ``KEY=VALUE`` overrides, space separated (e.g. "fl.rounds=3 output_dir=/runs/x")
    resume            continue the run in ``output_dir`` from its last checkpoint (true) or start it (false)
    connect-timeout   seconds to wait at start for all ``data.num_clients`` clients to connect (then go on
                      with those present; an absent sampled client counts as failed in its round)
    round-timeout     seconds a round waits for replies before counting the missing clients as failed (0 = no
                      limit; a SuperNode that disappears is noticed through Flower's heartbeat, about 60 s)
    poll-interval     seconds between polls for replies

Node config (``flower-supernode --node-config``), read by the ClientApp:

    partition-id      this node is client ``partition-id`` and keeps that piece of the seeded partition of the
                      training rows it reads (every node reads the same rows; as the simulator, for tests and
                      simulations)
    num-partitions    optional check: must equal the run's ``data.num_clients``
    client-id         this node is client ``client-id`` and trains on all of its own rows (a real device)
    overrides         fedspear overrides local to this node, e.g. "data.path=/data/mine feedback.provider=oracle";
                      only keys in :data:`NODE_OVERRIDE_KEYS` (where the data is, how this device runs the model)

This module imports no Flower code, so ``fedspear flower-config`` works where Flower is not installed.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fedspear.config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from fedspear.presets import resolve_config

FLWR_VERSION = "1.42.0"
SERVER_APP_REF = "fedspear.flower.server_app:app"
CLIENT_APP_REF = "fedspear.flower.client_app:app"
# ClientApps a Flower app can run (`fedspear flower-config --clients`): "oracle" rolls out the node's task rows
# with oracle feedback; "served" trains from the trace store of the node's `fedspear serve` page (people's feedback).
CLIENT_APPS = {"oracle": CLIENT_APP_REF, "served": "fedspear.flower.served_client_app:app"}
CONNECTION_NAME = "fedspear"
# Node-local overrides a SuperNode may apply: where its data is and how its device runs the model. Everything
# that changes what is trained (algorithm, LoRA layout, hyperparameters) comes from the server's config.
NODE_OVERRIDE_KEYS = ("data.path", "data.split", "data.eval_split", "data.max_examples_per_client", "feedback.",
                      "hf.", "model.device_map", "model.dtype", "model.load_in_4bit", "model.gradient_checkpointing",
                      "gen.rollout_batch_size", "optim.micro_batch_size")


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


@dataclass
class ServerSettings:
    """What the ServerApp reads from the run config (see the module docstring)."""

    config_yaml: str
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    connect_timeout: float = 300.0
    round_timeout: float = 0.0
    poll_interval: float = 0.5

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerSettings:
        """Parse Flower's run config (``context.run_config``)."""
        text = run_config.get("fedspear-config")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("the Flower run config has no 'fedspear-config'; write the app with `fedspear flower-config`")
        return cls(text, shlex.split(str(run_config.get("overrides", "") or "")), _bool(run_config.get("resume", False)),
                   float(run_config.get("connect-timeout", 300.0)), float(run_config.get("round-timeout", 0.0)),
                   float(run_config.get("poll-interval", 0.5)))

    def config(self) -> Config:
        """The run's config: ``fedspear-config`` with ``overrides`` applied (validated)."""
        cfg = config_from_dict(yaml.safe_load(self.config_yaml))
        if self.overrides:
            apply_overrides(cfg, self.overrides)
        return cfg


@dataclass
class NodeSettings:
    """Who a SuperNode is in the federation and its local overrides (see the module docstring).

    Attributes:
        client_id: the client id the server samples.
        partition_id: the shared partition's piece to keep, or None for a device's own data.
        num_partitions: the node's idea of the federation size, checked against ``data.num_clients``.
        overrides: node-local fedspear overrides.
    """

    client_id: int
    partition_id: int | None = None
    num_partitions: int | None = None
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        """Parse a SuperNode's ``--node-config`` (``context.node_config``).

        Raises:
            ConfigError: neither ``partition-id`` nor ``client-id`` is given, or an override is not node-local.
        """
        overrides = shlex.split(str(node_config.get("overrides", "") or ""))
        for item in overrides:
            key = item.split("=", 1)[0]
            if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NODE_OVERRIDE_KEYS):
                raise ConfigError(f"node override '{key}' is not node-local; a SuperNode may set only "
                                  f"{', '.join(NODE_OVERRIDE_KEYS)} (the rest comes from the server's config)")
        num = node_config.get("num-partitions")
        if "partition-id" in node_config:
            pid = int(node_config["partition-id"])
            return cls(int(node_config.get("client-id", pid)), pid, int(num) if num is not None else None, overrides)
        if "client-id" in node_config:
            return cls(int(node_config["client-id"]), None, int(num) if num is not None else None, overrides)
        raise ConfigError("a fedspear SuperNode needs --node-config 'partition-id=N' (shared data, simulations) "
                          "or 'client-id=N' (its own data)")

    def check(self, num_clients: int) -> None:
        """Raise ConfigError when this node does not fit a federation of ``num_clients`` clients."""
        if not 0 <= self.client_id < num_clients:
            raise ConfigError(f"client-id {self.client_id} is outside [0, data.num_clients={num_clients})")
        if self.num_partitions is not None and self.num_partitions != num_clients:
            raise ConfigError(f"num-partitions={self.num_partitions} but the run has data.num_clients={num_clients}")

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with this node's overrides applied (in place; returned for chaining)."""
        if self.overrides:
            apply_overrides(cfg, self.overrides)
        return cfg


def _toml_string(text: str) -> str:
    """A TOML string holding ``text``: a literal multi-line string when possible (readable), else JSON-escaped."""
    if "'''" not in text and not text.endswith("'"):
        return "'''\n" + text + "'''"
    return json.dumps(text)  # JSON escapes are valid TOML basic-string escapes


def app_pyproject(cfg: Config, *, resume: bool = False, connect_timeout: float = 300.0, round_timeout: float = 0.0,
                  poll_interval: float = 0.5, name: str = "fedspear-flower", clients: str = "oracle") -> str:
    """The pyproject.toml of a Flower app running ``cfg`` with the fedspear ServerApp and the ``clients`` ClientApp
    (a key of :data:`CLIENT_APPS`)."""
    if clients not in CLIENT_APPS:
        raise ConfigError(f"unknown client app '{clients}'; choose one of {', '.join(CLIENT_APPS)}")
    return f"""# A Flower app that runs fedspear (written by `fedspear flower-config`). The ServerApp and ClientApp live in the
# installed fedspear package, which the SuperLink and every SuperNode need: pip install 'fedspear[flower]'.
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "1.0.0"
description = "fedspear: {cfg.algorithm.name} on {cfg.data.dataset} over Flower"
license = "Apache-2.0"
dependencies = ["flwr=={FLWR_VERSION}"]

[tool.flwr.app]
publisher = "fedspear"

[tool.flwr.app.components]
serverapp = "{SERVER_APP_REF}"
clientapp = "{CLIENT_APPS[clients]}"

[tool.flwr.app.config]
overrides = ""
resume = {"true" if resume else "false"}
connect-timeout = {float(connect_timeout)}
round-timeout = {float(round_timeout)}
poll-interval = {float(poll_interval)}
fedspear-config = {_toml_string(cfg.to_yaml())}
"""


def flower_config_toml(superlink: str, *, insecure: bool = True, root_certificates: str | None = None) -> str:
    """A Flower configuration (``$FLWR_HOME/config.toml``) whose default connection ``fedspear`` is ``superlink``."""
    lines = ["[superlink]", f'default = "{CONNECTION_NAME}"', "", f"[superlink.{CONNECTION_NAME}]",
             f"address = {json.dumps(superlink)}"]
    if root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).expanduser().resolve()))}")
    else:
        lines.append(f"insecure = {'true' if insecure else 'false'}")
    return "\n".join(lines) + "\n"


def write_flower_app(cfg: Config, out_dir: Path, *, superlink: str = "127.0.0.1:9093", insecure: bool = True,
                     root_certificates: str | None = None, **settings: Any) -> Path:
    """Write a Flower app folder for ``cfg``: ``pyproject.toml`` and ``.flwr/config.toml`` (the connection).

    ``cfg.output_dir`` and the local relative paths in ``data.path`` and ``model.model_name`` /
    ``tokenizer_name`` are made absolute (relative to the current folder), since the ServerApp runs wherever
    the SuperLink runs (in the written config; ``cfg`` itself is not modified). Run it with ``FLWR_HOME=<out_dir>/.flwr flwr run <out_dir> --stream``.

    Args:
        cfg: the resolved run configuration.
        out_dir: the app folder (created).
        superlink: the SuperLink's address as host:port.
        insecure: connect without TLS (ignored when ``root_certificates`` is given).
        root_certificates: the CA certificate (PEM) that signed the SuperLink's TLS certificate.
        **settings: run-config settings for :func:`app_pyproject` (resume, connect_timeout, round_timeout, ...).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    (out_dir / ".flwr").mkdir(parents=True, exist_ok=True)
    if "{" not in cfg.output_dir:
        cfg = replace(cfg, output_dir=str(Path(cfg.output_dir).expanduser().resolve()))  # a copy, as below
    for section, key in (("data", "path"), ("model", "model_name"), ("model", "tokenizer_name")):
        value = getattr(getattr(cfg, section), key)
        if value and not Path(value).is_absolute() and Path(value).expanduser().exists():  # a local relative path
            absolute = str(Path(value).expanduser().resolve())
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{key: absolute})})
    (out_dir / "pyproject.toml").write_text(app_pyproject(cfg, **settings), encoding="utf-8")
    (out_dir / ".flwr" / "config.toml").write_text(
        flower_config_toml(superlink, insecure=insecure, root_certificates=root_certificates), encoding="utf-8")
    return out_dir


# --------------------------------------------------------------------------- `fedspear flower-config`


def add_parser(sub: Any, parents: list[Any]) -> None:
    """Add the ``flower-config`` subcommand to the ``fedspear`` parser's subparsers."""
    p = sub.add_parser("flower-config", parents=parents, help="write a Flower app folder that runs a fedspear config",
                       description="Write a Flower app (pyproject.toml with the resolved config, and .flwr/config.toml "
                       "with the SuperLink connection) and print the commands that run it.")
    p.add_argument("--config", metavar="FILE|PRESET", help="YAML file or preset name (default: default)")
    p.add_argument("--out", default="flower_app", metavar="DIR", help="app folder to write (default: flower_app)")
    p.add_argument("--superlink", default="127.0.0.1:9093", metavar="HOST:PORT",
                   help="the SuperLink's address (default: 127.0.0.1:9093)")
    p.add_argument("--root-certificates", metavar="CA_PEM",
                   help="CA certificate of the SuperLink's TLS certificate (default: no TLS, for local runs)")
    p.add_argument("--clients", choices=sorted(CLIENT_APPS), default="oracle",
                   help="oracle: each SuperNode rolls out its task rows with oracle feedback (default); served: each "
                   "SuperNode trains from its `fedspear serve` page's trace store (node config: client-id=N "
                   "state-dir='DIR')")
    p.add_argument("--resume", action="store_true", help="resume output_dir from its checkpoint when it has one")
    p.add_argument("--connect-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for all clients at start (default: 300)")
    p.add_argument("--round-timeout", type=float, default=0.0, metavar="S",
                   help="seconds a round waits for replies; 0 = no limit (default)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides such as fl.rounds=3")


def cmd_flower_config(args: Any) -> int:
    """Write the Flower app folder for ``--config`` + overrides and print how to run it."""
    cfg = load_config(resolve_config(args.config), args.overrides)
    out = write_flower_app(cfg, Path(args.out), superlink=args.superlink, root_certificates=args.root_certificates,
                           resume=args.resume, connect_timeout=args.connect_timeout, round_timeout=args.round_timeout,
                           clients=args.clients)
    home = (out / ".flwr").resolve()
    print(out)
    node = ("client-id=N state-dir='<its fedspear serve --state folder>'" if args.clients == "served"
            else f"partition-id=N num-partitions={cfg.data.num_clients}")
    print(f"# start {cfg.data.num_clients} SuperNodes, N = 0..{cfg.data.num_clients - 1}:\n"
          f"flower-supernode --insecure --superlink {args.superlink} --node-config \"{node}\"\n"
          f"# then run it (SuperLink at {args.superlink}):\n"
          f"FLWR_HOME={home} flwr run {out.resolve()} {CONNECTION_NAME} --stream", file=sys.stderr)
    return 0
