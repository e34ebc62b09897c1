"""The ``fedspear serve`` and ``fedspear train-local`` commands (wired into :mod:`fedspear.cli`).

    fedspear serve [--config FILE|PRESET] [--state DIR] [--host 127.0.0.1] [--port 8000] [KEY=VALUE ...]
    fedspear train-local [--config FILE|PRESET] [--state DIR] [--client-id 0] [--lr LR] [KEY=VALUE ...]

Both work on a client *state folder* (default ``fedspear-client``, owner-only): ``traces.sqlite``, ``adapters/``
and ``config.yaml``, the resolved config of the last ``serve``. It holds no secret: ``serve`` prints a one-time
login link whose session ends with the process (:mod:`fedspear.serve.security`). Without ``--config``, a command uses the folder's
``config.yaml`` when there is one, else the default preset (the built-in world), so ``train-local`` trains
the model that ``serve`` serves.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
from pathlib import Path
from typing import Any

from fedspear.config import Config, ConfigError, load_config
from fedspear.presets import resolve_config

logger = logging.getLogger("fedspear")

DEFAULT_STATE = "fedspear-client"
CONFIG_FILE = "config.yaml"


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` and ``train-local`` subparsers to ``fedspear``'s parser."""
    serve = sub.add_parser("serve", parents=parents, help="serve a web page that answers, takes feedback and learns")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this device only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--adapter", metavar="DIR", help="serve this adapter (a `fedspear run` adapters/round_N "
                                                        "folder), published as the client's next version")
    serve.add_argument("--rate", type=int, default=30, metavar="N", help="answers one client may request per minute")
    serve.add_argument("--token-delay-ms", type=float, default=0.0, metavar="MS",
                       help="pause after each generated token (to watch streaming with a fast model)")
    serve.add_argument("--seed", type=int, default=None, help="seed the answers' sampling (default: fresh randomness)")
    serve.add_argument("--threads", type=int, default=1, metavar="N",
                       help="CPU threads per answer (default 1: one short sequence at a time gains nothing from more "
                            "and slows down badly when other programs share the cores; 0 = model.torch_threads)")
    train = sub.add_parser("train-local", parents=parents,
                           help="one SPEAR update from the stored feedback; publishes the next adapter version")
    _common(train)
    train.add_argument("--client-id", type=int, default=0, help="client index used in the training seed")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: optim.lr)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE|PRESET",
                   help="YAML file or preset (default: STATE/config.yaml if present, else the default preset)")
    p.add_argument("--state", default=DEFAULT_STATE, metavar="DIR",
                   help=f"the client's state folder: traces, adapters, config (default: {DEFAULT_STATE})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides such as gen.do_sample=false")


def client_config(args: argparse.Namespace) -> Config:
    """``--config`` (or the state folder's config.yaml, or the default preset) plus the overrides."""
    saved = Path(args.state) / CONFIG_FILE
    path = resolve_config(args.config) if args.config is not None or not saved.is_file() else saved
    return load_config(path, args.overrides)


def _check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: choose a port between 1 and 65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
                              "pick another port") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model and serve the page until interrupted."""
    cfg = client_config(args)
    _check_port(args.host, args.port)
    if args.rate < 1:
        raise ConfigError("--rate must be at least 1 answer per minute")
    try:
        from fedspear.serve.app import ServeOptions, serve
    except ImportError as exc:
        raise ConfigError(f"fedspear serve needs the web packages ({exc.name} is missing): "
                          "pip install -e '.[serve]'") from None
    from fedspear.federation.assembly import assemble
    from fedspear.serve.adapters import check_adapter, load_peft_adapter
    from fedspear.serve.runtime import STORE_FILE, ClientRuntime
    from fedspear.serve.security import secure_state
    from fedspear.serve.store import TraceStore

    if args.threads < 0:
        raise ConfigError("--threads must be 0 (model.torch_threads decides) or more")
    state = Path(args.state)
    secure_state(state)  # owner-only folder, before anything is written into it
    TraceStore(state / STORE_FILE).close()  # a damaged store fails now, not after loading the model
    initial = load_peft_adapter(args.adapter) if args.adapter else None
    if args.threads > 0:  # loading the model applies model.torch_threads (fedspear.threads)
        from dataclasses import replace

        cfg = replace(cfg, model=replace(cfg.model, torch_threads=str(args.threads)))
    run = assemble(cfg, data=False, oracle=False)  # a served client: people give the feedback
    policy, cfg = run.policy, run.cfg  # cfg: a copy with the policy's capped model.max_seq_len
    if initial is not None:  # refuse an adapter of another model or rank before the folder changes
        check_adapter(initial, policy.adapter.params, f"--adapter {args.adapter}")
    runtime = ClientRuntime(policy, run.task, cfg, state, token_delay_s=args.token_delay_ms / 1000.0, initial_adapter=initial,
                            initial_label=f"from {args.adapter}" if args.adapter else "", seed=args.seed)
    (state / CONFIG_FILE).write_text(cfg.to_yaml())
    try:
        serve(runtime, args.host, args.port, ServeOptions(rate_per_minute=args.rate))
    finally:
        runtime.close()
    return 0


def cmd_train_local(args: argparse.Namespace) -> int:
    """Train once from the stored feedback and print a JSON summary (the published version, the metrics)."""
    cfg = client_config(args)
    from fedspear.federation.assembly import assemble
    from fedspear.serve.learning import train_local
    from fedspear.serve.security import secure_state

    state = Path(args.state)
    if not (state / "traces.sqlite").is_file():
        raise FileNotFoundError(f"{state / 'traces.sqlite'}: no trace store; start `fedspear serve --state {state}` "
                                "and answer some questions first")
    secure_state(state)  # the page's folder: owner-only, as `serve` keeps it
    run = assemble(cfg, data=False, oracle=False)  # the served client's run: people gave the feedback
    summary = train_local(run.policy, run.task, run.cfg, state, client_id=args.client_id, lr=args.lr)
    if summary["published"] is None:
        logger.warning("no update: the store has no accepted answer to learn from (%d interactions used)",
                       int(summary["metrics"].get("store_interactions", 0)))
    print(json.dumps(summary))
    return 0
