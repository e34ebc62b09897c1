"""Typed run configuration: dataclasses, YAML presets, ``key=value`` overrides, validation.

The section and key names follow the authors' YAML schema; :mod:`fedspear.config_compat` maps their files onto
ours (dropping, with a warning, the keys nothing here reads), so they load unchanged. Keys this project adds are
marked "(fedspear)" in their help text. Each algorithm's section is its own settings dataclass, defined with the
other sections (:mod:`fedspear.config_sections`; the algorithms import them from :mod:`fedspear.algorithms.settings`);
see ``docs/configuration.md`` and ``docs/algorithms.md``.
Unknown keys and bad values raise :class:`ConfigError`, whose message names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedspear.config_compat import translate
from fedspear.config_sections import (  # noqa: F401 - re-exported: fedspear.config is the public module
    AGGREGATIONS,
    ALGORITHMS,
    CHAT_TEMPLATE_MODES,
    DP_MODES,
    DTYPES,
    INT_MAX,
    INT_MIN,
    REVISION_TEMPLATES,
    TASKS,
    TRACKERS,
    AlgorithmConfig,
    ConfigError,
    DataConfig,
    DPConfig,
    FeedbackConfig,
    FLConfig,
    GenConfig,
    GRPOSettings,
    HFConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    OPSDSettings,
    OptimConfig,
    RLTFSDSettings,
    SpearSettings,
    _f,
)
from fedspear.dotted import describe, load_object

# Algorithms added with register_algorithm and the config sections of their settings.
EXTRA_ALGORITHMS: list[str] = []
EXTRA_SECTIONS: dict[str, type] = {}


@dataclass
class Config:
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    spear: SpearSettings = field(default_factory=SpearSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    rltf_sd: RLTFSDSettings = field(default_factory=RLTFSDSettings)
    distill: OPSDSettings = field(default_factory=OPSDSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_dir: str = _f("runs/exp", "run folder; may use {time}, {algorithm}, {dataset}, {seed}")
    # Sections of algorithms added with register_algorithm (EXTRA_SECTIONS), by section name.
    extensions: dict[str, Any] = field(default_factory=dict, metadata={"help": ""})

    def section(self, name: str) -> Any:
        """The settings of section ``name``: a built-in section or a registered algorithm's (defaults if unset).

        Raises:
            ConfigError: no such section.
        """
        if name in EXTRA_SECTIONS:
            return self.extensions.get(name) or EXTRA_SECTIONS[name]()
        if name in _section_hints(Config) and name not in ("output_dir", "extensions"):
            return getattr(self, name)
        raise ConfigError(f"unknown section '{name}'")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        extensions = out.pop("extensions")
        out.update({name: dataclasses.asdict(self.section(name)) for name in EXTRA_SECTIONS
                    if name in extensions or self.algorithm.name in EXTRA_ALGORITHMS})
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- parsing


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _all_keys() -> dict[str, list[str]]:
    """``{key: [sections holding it]}`` for every dataclass field, to suggest keys put in the wrong section."""
    out: dict[str, list[str]] = {}
    for section, hint in _section_hints(Config).items():
        if dataclasses.is_dataclass(hint):
            for name in _section_hints(hint):
                out.setdefault(name, []).append(section)
    return out


def _suggest_key(section: str, key: str, options: list[str]) -> str:
    """The closest valid spelling of ``section.key``: the same key in another section, else the closest in this one."""
    elsewhere = _all_keys().get(key, [])
    if elsewhere:
        return f" (did you mean '{elsewhere[0]}.{key}'?)"
    initials = "".join(word[0] for word in key.split("_") if word)  # learning_rate -> lr
    match = [initials] if len(initials) > 1 and initials in options else []
    match = match or difflib.get_close_matches(str(key), options, n=1, cutoff=0.0)
    return f" (did you mean '{section}.{match[0]}'?)" if match else ""


def _suggest_section(name: str, sections: list[str]) -> str:
    """The closest section, or ``section.name`` when ``name`` is a key written without its section."""
    elsewhere = _all_keys().get(name, [])
    if elsewhere:
        return f" (did you mean '{elsewhere[0]}.{name}'?)"
    return _closest(name, sections)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a YAML value or raw CLI text to the field's type, or raise ConfigError naming the key and the fix."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        return _coerce_list(key, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {value!r}; write e.g. {key}=true")
    if hint is int:
        return _coerce_int(key, value)
    if hint is float:
        return _coerce_float(key, value)
    if hint is str:
        if isinstance(value, bool) and key in _ON_OFF_KEYS:  # YAML 1.1 reads a bare on/off as a boolean
            return "on" if value else "off"
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}; write e.g. {key}=some_text")
        return str(value)
    return value


_TRUE = ("true", "yes", "1", "on")
_ON_OFF_KEYS = ("model.chat_template",)  # string settings with on/off values, which YAML turns into booleans
_FALSE = ("false", "no", "0", "off")


def _coerce_list(key: str, value: Any) -> list[str]:
    """A list of strings from a YAML list, ``"[a,b]"`` or ``"a,b"``; ``None`` and ``"[]"`` give ``[]``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: cannot read {value!r} as a list; write e.g. {key}=[q_proj,v_proj]") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or any(isinstance(v, (list, dict)) or v is None for v in value):
        raise ConfigError(f"{key}: expected a list of names, got {value!r}; write e.g. {key}=[q_proj,v_proj]")
    return [str(v) for v in value]


def _coerce_int(key: str, value: Any) -> int:
    """An int from an int, an integral float (``5.0``, ``1e3``) or their text; bools are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _bounded_int(key, value)
    number: Any = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            exact = int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = None
        else:
            return _bounded_int(key, exact)
    if isinstance(number, float) and number.is_integer():
        return _bounded_int(key, int(number))
    raise ConfigError(f"{key}: expected an integer, got {value!r}; write e.g. {key}=3")


def _bounded_int(key: str, value: int) -> int:
    """``value`` when it fits a signed 64-bit integer (what numpy, torch and the checkpoint store), else ConfigError."""
    if not INT_MIN <= value <= INT_MAX:
        raise ConfigError(f"{key}: {value} does not fit in 64 bits; use a value between {INT_MIN} and {INT_MAX}")
    return value


def _coerce_float(key: str, value: Any) -> float:
    """A float from a number or its text (``5e-5`` works); bools, NaN and +-inf (also ``1e999``) are refused."""
    number: float | None = None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**1023:
        number = math.inf
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or math.isnan(number):
        raise ConfigError(f"{key}: expected a number, got {value!r}; write e.g. {key}=0.5 or {key}=5e-5")
    if math.isinf(number):
        raise ConfigError(f"{key}: {value!r} is infinite; a run needs a finite number, e.g. {key}=0.5 or {key}=5e-5")
    return number


def _section_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_LIST_KEYS_HINT = "run `fedspear check --list` to see every key"


def _apply(cfg: Config, data: dict[str, Any], source: str) -> None:
    """Set the values of ``{section: {key: value}}`` (or ``{"output_dir": value}``) on ``cfg``.

    Raises:
        ConfigError: an unknown section or key (naming the closest valid one) or a value of the wrong type,
            prefixed with ``source`` (a file path or "override").
    """
    data = translate(data, source)
    name = data.get("algorithm", {}).get("name") if isinstance(data.get("algorithm"), dict) else None
    if isinstance(name, str) and ":" in name:  # a user's algorithm: its settings section must be known first
        resolve_algorithm_name(name)
    top_hints = {k: v for k, v in _section_hints(Config).items() if k != "extensions"}
    top_hints.update(EXTRA_SECTIONS)
    for section, values in data.items():
        section = str(section)
        try:
            if section not in top_hints:
                raise ConfigError(
                    f"unknown section '{section}'{_suggest_section(section, list(top_hints))}; {_LIST_KEYS_HINT}"
                )
            if section == "output_dir":
                cfg.output_dir = _coerce("output_dir", values, str)
                continue
            if values is None:
                continue
            if section in EXTRA_SECTIONS:
                cfg.extensions.setdefault(section, EXTRA_SECTIONS[section]())
            obj = cfg.section(section)
            hints = _section_hints(type(obj))
            if not isinstance(values, dict):
                raise ConfigError(
                    f"'{section}' is a section, not a value, got {values!r}; "
                    f"set its keys instead, e.g. {section}.{next(iter(hints))}=..."
                )
            for key, value in values.items():
                key = str(key)
                if key not in hints:
                    raise ConfigError(
                        f"unknown key '{section}.{key}'{_suggest_key(section, key, list(hints))}; {_LIST_KEYS_HINT}"
                    )
                setattr(obj, key, _coerce(f"{section}.{key}", value, hints[key]))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["fl.rounds=3", "output_dir=x"]`` into ``{"fl": {"rounds": "3"}, "output_dir": "x"}``.

    Values stay raw text: each is converted by the field's own type when applied, so a string field keeps
    exactly what was typed (``model.model_name=1.10`` stays "1.10") while ``fl.rounds=3`` becomes 3,
    ``lora.target_modules=[q_proj,v_proj]`` a list and ``model.tokenizer_name=null`` None.

    Args:
        overrides: ``SECTION.KEY=VALUE`` or ``output_dir=VALUE`` items.

    Returns:
        The nested dict of raw string values.

    Raises:
        ConfigError: an item is not ``KEY=VALUE`` or its key has more than one dot.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not KEY=VALUE; write e.g. fl.rounds=3")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"override key '{key}' must be SECTION.KEY (e.g. fl.rounds) or output_dir")
        if len(parts) == 1:
            nested[parts[0]] = raw
            continue
        section = nested.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override '{item}': '{parts[0]}' was also given a plain value")
        section[parts[1]] = raw
    return nested


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (plain PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; SafeLoader reports it below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key '{key}'",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_config(path: Path) -> dict[str, Any]:
    """The ``{section: {key: value}}`` mapping of a YAML config file.

    Raises:
        ConfigError: naming the file: missing, empty (or only comments), not valid YAML, a key written twice
            in one mapping, or a top level that is not a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except yaml.constructor.ConstructorError as exc:
        line = f" on line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        fix = "write each key once per section" if "duplicate" in str(exc.problem) else "keys must be plain names"
        raise ConfigError(f"{path}: {exc.problem}{line}; {fix}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; write at least one section (e.g. 'fl:' with 'rounds: 3') "
                          "or drop --config to use the default preset")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def nest_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Config values given in Python as ``{section: {key: value}}`` and/or dotted ``{"section.key": value}`` (and
    ``output_dir``) -> the nested layout of a YAML file; values keep their Python types.

    Raises:
        ConfigError: a key that is not a string or has more than one dot, or one key given twice.
    """
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} is not a string; write e.g. {{'fl.rounds': 3}}")
        parts = key.strip().split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"config key '{key}' must be SECTION.KEY (e.g. fl.rounds), a section or output_dir")
        items = {parts[1]: value} if len(parts) == 2 else value
        if isinstance(items, Mapping) and parts[0] != "output_dir":
            section = nested.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"config key '{key}': '{parts[0]}' was also given a plain value")
            for sub, v in items.items():
                if sub in section:
                    raise ConfigError(f"config key '{parts[0]}.{sub}' is given twice; give it once")
                section[sub] = v
        elif parts[0] in nested:
            raise ConfigError(f"config key '{key}' is given twice; give it once")
        else:
            nested[parts[0]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                values: Mapping[str, Any] | None = None) -> Config:
    """Build a validated Config from an optional YAML file, then ``values``, then ``key=value`` overrides.

    Args:
        path: a YAML file, or None for the built-in defaults.
        overrides: ``SECTION.KEY=VALUE`` text items, as on the command line.
        values: Python values (:func:`nest_values`), applied after the file and before the overrides.

    Raises:
        ConfigError: see :func:`read_yaml_config` and :func:`validate`.
    """
    cfg = Config()
    if path is not None:
        path = Path(path)
        _apply(cfg, read_yaml_config(path), str(path))
    if values:
        _apply(cfg, nest_values(values), "config")
    if overrides:
        _apply(cfg, parse_overrides(overrides), "override")
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` overrides to an existing Config in place, then validate it."""
    _apply(cfg, parse_overrides(overrides), "override")
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. a run folder's config.yaml)."""
    cfg = Config()
    _apply(cfg, data, "config")
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: str, key: str, options: tuple[str, ...]) -> None:
    _check(value in options, key, f"'{value}' is not one of {', '.join(options)}{_closest(value, list(options))}")


def known_algorithms() -> tuple[str, ...]:
    """Every name ``algorithm.name`` accepts now: the built-ins, then those registered or loaded by dotted path."""
    return ALGORITHMS + tuple(EXTRA_ALGORITHMS)


def resolve_algorithm_name(name: str, key: str = "algorithm.name") -> None:
    """Make ``name`` usable as ``algorithm.name``: a built-in or registered name, or a user's algorithm class as a
    dotted path ``pkg.mod:Class`` (docs/extending.md).

    A dotted path is imported here (the user's module, on ``sys.path``: installed or on ``PYTHONPATH``), so the
    config then accepts the name and the class's settings section (``Class.section`` / ``Class.Settings``, as
    ``register_algorithm`` does); the algorithm registry (:func:`fedspear.algorithms.registry.algorithm_class`)
    builds the class from the same path.

    Raises:
        ConfigError: an unknown name (naming the closest), a path that does not import, or an object that is not
            an algorithm class (no ``name``, ``rollout`` and ``train``).
    """
    if ":" not in name:
        if "." in name and name not in known_algorithms():  # sft_wins.SFTWins: a dotted path missing its colon
            module, _, attr = name.rpartition(".")
            raise ConfigError(f"{key}: '{name}' is not a built-in algorithm; a class of your own is named "
                              f"module:Class, e.g. {module}:{attr}")
        _one_of(name, key, known_algorithms())
        return
    if name in EXTRA_ALGORITHMS:
        return
    import inspect

    obj = load_object(name, key)
    fits = inspect.isclass(obj) and isinstance(getattr(obj, "name", None), str) and all(
        callable(getattr(obj, m, None)) for m in ("rollout", "train", "from_config"))
    _check(fits, f"{key}={name}", f"{describe(obj)} is not a subclass of fedspear.algorithms.base.Algorithm "
                                  "with a name (see docs/extending.md)")
    clash = claim_section(getattr(obj, "section", None), getattr(obj, "Settings", None), obj.name)
    _check(clash is None, f"{key}={name}", clash or "")
    EXTRA_ALGORITHMS.append(name)


def claim_section(section: str | None, settings: type | None, algorithm: str) -> str | None:
    """Let the config accept the settings section of a user's algorithm (``Class.section``, ``Class.Settings``).

    A new section is added (:data:`EXTRA_SECTIONS`); a section that already exists must hold the same settings
    class (e.g. a SPEAR variant reading ``spear.*`` with ``SpearSettings``). Returns None when the section is
    usable, else the one-line reason (the caller raises it): a built-in section such as ``fl`` or ``spear``, or
    another algorithm's section, with other settings.
    """
    if section is None:
        return None
    builtin = Config.__dataclass_fields__.get(section)
    if builtin is not None:
        holds = builtin.default_factory() if builtin.default_factory is not dataclasses.MISSING else None
        if settings is None or type(holds) is not settings:
            return (f"algorithm '{algorithm}' names section '{section}', which is fedspear's own; give it a "
                    f"section of its own (e.g. section = \"{algorithm}\") with its Settings dataclass")
        return None
    known = EXTRA_SECTIONS.get(section, settings)
    if settings is None or known is not settings:
        return f"section '{section}' of algorithm '{algorithm}' needs a Settings dataclass of its own"
    EXTRA_SECTIONS[section] = settings
    return None


def _one_of_or_dotted(value: str, key: str, options: tuple[str, ...]) -> None:
    """A built-in name, or a user's class as ``module:attr`` (imported by :mod:`fedspear.extensions`)."""
    if ":" in value:
        module, _, attr = value.partition(":")
        _check(bool(module.strip()) and bool(attr.strip()), key, f"'{value}': write a dotted path module:Class")
    else:
        _one_of(value, key, options)


def _check_token_budget(cfg: Config) -> None:
    """Every generation budget must leave at least half of ``model.max_seq_len`` for the prompt (prompts are
    left-truncated to ``max_seq_len - max_new_tokens``; with no room left every prompt is cut to a few tokens)."""
    seq = cfg.model.max_seq_len
    budgets = {"gen.max_new_tokens_y0": cfg.gen.max_new_tokens_y0, "gen.max_new_tokens_y1": cfg.gen.max_new_tokens_y1}
    if cfg.gen.eval_max_new_tokens is not None:
        budgets["gen.eval_max_new_tokens"] = cfg.gen.eval_max_new_tokens
    for key, value in budgets.items():
        _check(2 * value <= seq, key,
               f"{value} new tokens leave {max(0, seq - value)} of model.max_seq_len={seq} for the prompt; "
               f"keep {key} <= model.max_seq_len / 2 (raise model.max_seq_len or lower {key})")


def validate(cfg: Config) -> None:
    """Raise ConfigError for values no run could use."""
    _check(bool(str(cfg.output_dir).strip()), "output_dir",
           "is empty (the run would be written into the current folder); set e.g. output_dir=runs/my-run")
    resolve_algorithm_name(cfg.algorithm.name)
    _one_of_or_dotted(cfg.data.dataset, "data.dataset", TASKS)
    _one_of_or_dotted(cfg.fl.aggregation, "fl.aggregation", AGGREGATIONS)
    if ":" in cfg.fl.aggregation:  # a user's rule: importable and callable before any work
        from fedspear.dotted import describe, load_object

        rule = load_object(cfg.fl.aggregation, "fl.aggregation")
        _check(callable(rule) and not isinstance(rule, type), "fl.aggregation",
               f"'{cfg.fl.aggregation}' is {describe(rule)}, not a function; name a function "
               "rule(states, weights, fl_cfg) -> new state (docs/extending.md)")
    _one_of(cfg.model.dtype, "model.dtype", DTYPES)
    threads = str(cfg.model.torch_threads).strip().lower()
    _check(threads == "auto" or (threads.isdigit() and int(threads) >= 1), "model.torch_threads",
           f"'{cfg.model.torch_threads}' is neither auto nor a positive integer; write e.g. model.torch_threads=1")
    _one_of(cfg.model.chat_template, "model.chat_template", CHAT_TEMPLATE_MODES)
    _one_of_or_dotted(cfg.feedback.provider, "feedback.provider", ("oracle", "none"))
    _one_of(cfg.lora.bias, "lora.bias", ("none", "all", "lora_only"))
    _one_of(cfg.gen.revision_template, "gen.revision_template", REVISION_TEMPLATES)
    _one_of(cfg.gen.scheduler, "gen.scheduler", ("batched", "continuous"))
    _one_of(cfg.gen.cache, "gen.cache", ("dynamic", "static"))
    _one_of(cfg.data.eval_method, "data.eval_method", ("auto", "generative", "log_likelihood", "both"))
    _one_of(cfg.data.long_prompts, "data.long_prompts", ("skip", "truncate", "error"))
    positive = {
        "model.max_seq_len": cfg.model.max_seq_len, "lora.r": cfg.lora.r, "lora.last_n_layers": cfg.lora.last_n_layers,
        "data.num_clients": cfg.data.num_clients, "data.max_examples_per_client": cfg.data.max_examples_per_client,
        "data.eval_every": cfg.data.eval_every, "data.max_eval_examples": cfg.data.max_eval_examples,
        "fl.rounds": cfg.fl.rounds, "fl.clients_per_round": cfg.fl.clients_per_round,
        "fl.local_rollout_steps": cfg.fl.local_rollout_steps, "fl.min_clients": cfg.fl.min_clients,
        "gen.max_new_tokens_y0": cfg.gen.max_new_tokens_y0, "gen.max_new_tokens_y1": cfg.gen.max_new_tokens_y1,
        "gen.rollout_batch_size": cfg.gen.rollout_batch_size, "gen.eval_batch_size": cfg.gen.eval_batch_size,
        "grpo.num_generations": cfg.grpo.num_generations, "rltf_sd.num_generations": cfg.rltf_sd.num_generations,
        "optim.batch_size": cfg.optim.batch_size,
        "optim.grad_accum_steps": cfg.optim.grad_accum_steps, "distill.temperature": cfg.distill.temperature,
        "data.dirichlet_alpha": cfg.data.dirichlet_alpha, "lora.alpha": cfg.lora.alpha,
        "optim.max_grad_norm": cfg.optim.max_grad_norm,
    }
    for key, value in positive.items():
        _check(value > 0, key, f"must be > 0, got {value}")
    non_negative = {
        "fl.local_train_steps": cfg.fl.local_train_steps, "gen.num_revisions": cfg.gen.num_revisions,
        "gen.top_k": cfg.gen.top_k,
        "optim.lr": cfg.optim.lr, "optim.lr_min": cfg.optim.lr_min, "optim.weight_decay": cfg.optim.weight_decay,
        "spear.lambda_win": cfg.spear.lambda_win, "spear.lambda_lose": cfg.spear.lambda_lose,
        "spear.lambda_anchor": cfg.spear.lambda_anchor, "spear.ul_tail_tokens": cfg.spear.ul_tail_tokens,
        "spear.max_lose_ratio": cfg.spear.max_lose_ratio, "fl.fedprox_mu": cfg.fl.fedprox_mu,
        "spear.confidence_fixed": cfg.spear.confidence_fixed, "spear.confidence_unfixed": cfg.spear.confidence_unfixed,
        "grpo.beta_kl": cfg.grpo.beta_kl, "grpo.clip_range": cfg.grpo.clip_range, "lora.dropout": cfg.lora.dropout,
        "rltf_sd.beta_kl": cfg.rltf_sd.beta_kl,
        "data.eval_every_round_up_to": cfg.data.eval_every_round_up_to,
    }
    for key, value in non_negative.items():
        _check(value >= 0, key, f"must be >= 0, got {value}")
    _check(0 <= cfg.spear.unlikelihood_margin < 1, "spear.unlikelihood_margin", "must be in [0, 1)")
    _check(0 <= cfg.spear.ema_decay < 1, "spear.ema_decay", "must be in [0, 1)")
    for knob in ("false_accept_rate", "false_reject_rate", "misleading_hint_rate", "no_hint_rate", "drop_rate"):
        value = getattr(cfg.feedback, knob)
        _check(0 <= value <= 1, f"feedback.{knob}", f"must be in [0, 1], got {value}")
    _check(cfg.feedback.misleading_hint_rate + cfg.feedback.no_hint_rate <= 1, "feedback.misleading_hint_rate",
           "+ feedback.no_hint_rate must be <= 1 (a hint is bare, misleading or the oracle's)")
    # Misleading hints and false rejects need a task with misleading_feedback: a capability of the task, checked
    # where the run's task is assembled (fedspear.feedback_noise.check_feedback_noise via extensions).
    _check(0 < cfg.data.eval_fraction < 1, "data.eval_fraction", "must be in (0, 1)")
    _check(0 <= cfg.optim.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
    _check(0 < cfg.gen.top_p <= 1, "gen.top_p", "must be in (0, 1]")
    _check(cfg.gen.temperature > 0 or not cfg.gen.do_sample, "gen.temperature", "must be > 0 when sampling")
    _check(0 < cfg.gen.eval_top_p <= 1, "gen.eval_top_p", "must be in (0, 1]")
    _check(cfg.gen.eval_temperature > 0 or not cfg.gen.eval_do_sample, "gen.eval_temperature",
           "must be > 0 when gen.eval_do_sample is true")
    optional_positive = {
        "gen.eval_max_new_tokens": cfg.gen.eval_max_new_tokens, "optim.micro_batch_size": cfg.optim.micro_batch_size,
        "grpo.reward_clip": cfg.grpo.reward_clip, "rltf_sd.reward_clip": cfg.rltf_sd.reward_clip,
    }
    for key, value in optional_positive.items():
        _check(value is None or value > 0, key, f"must be > 0 or null (= off), got {value}")
    _check(
        cfg.fl.clients_per_round <= cfg.data.num_clients, "fl.clients_per_round",
        f"{cfg.fl.clients_per_round} > data.num_clients={cfg.data.num_clients}; lower it or add clients",
    )
    _check(cfg.fl.min_clients <= cfg.fl.clients_per_round, "fl.min_clients", "must be <= fl.clients_per_round")
    _check(cfg.fl.max_idle_rounds >= 0, "fl.max_idle_rounds", f"must be >= 0 (0 = never stop), got {cfg.fl.max_idle_rounds}")
    _check_token_budget(cfg)
    _validate_robust_and_dp(cfg)


# dp.noise_multiplier's upper bound: at sigma = 1e4 one round's epsilon is already below 1e-2 after 1000 rounds
# (q = 1, delta = 1e-5), and larger sigmas overflow dp-accounting's RDP terms (sigma^2) near 1e154.
MAX_NOISE_MULTIPLIER = 1e4
# The largest noise std sigma * C: the noise and the noised adapter stay finite in float32 (max 3.4e38).
MAX_NOISE_STD = 1e30


def _validate_robust_and_dp(cfg: Config) -> None:
    """The robust-aggregation, differential-privacy and tracking keys."""
    _check(0 <= cfg.fl.trim_ratio < 0.5, "fl.trim_ratio", f"must be in [0, 0.5), got {cfg.fl.trim_ratio}")
    _check(cfg.fl.krum_f >= 0, "fl.krum_f", f"must be >= 0, got {cfg.fl.krum_f}")
    if cfg.fl.aggregation == "trimmed_mean":
        _check_trimmed_mean(cfg.fl.trim_ratio, cfg.fl.clients_per_round, cfg.fl.min_clients)
    if cfg.fl.aggregation in ("krum", "multi_krum"):
        _check_krum(cfg.fl.krum_f, cfg.fl.clients_per_round)
    _check_multi_krum_m(cfg.fl.multi_krum_m, cfg.fl.krum_f, cfg.fl.clients_per_round)
    _one_of(cfg.dp.mode, "dp.mode", DP_MODES)
    _check(cfg.dp.clip_norm > 0, "dp.clip_norm", f"must be > 0, got {cfg.dp.clip_norm}")
    _check(0 <= cfg.dp.noise_multiplier <= MAX_NOISE_MULTIPLIER, "dp.noise_multiplier",
           f"must be in [0, {MAX_NOISE_MULTIPLIER:g}], got {cfg.dp.noise_multiplier:g} (above {MAX_NOISE_MULTIPLIER:g} "
           "the noise erases every update and the privacy accountant leaves double precision)")
    std = cfg.dp.noise_multiplier * cfg.dp.clip_norm
    _check(cfg.dp.mode == "off" or std <= MAX_NOISE_STD, "dp.clip_norm", f"times dp.noise_multiplier is the noise std sigma*C = {std:g}; keep it "
           f"<= {MAX_NOISE_STD:g} so the noised adapter stays finite in float32 (lower dp.clip_norm)")
    _check(0 < cfg.dp.delta < 1, "dp.delta", f"must be in (0, 1), got {cfg.dp.delta}")
    _check(cfg.dp.mode != "central" or cfg.fl.aggregation in ("fedavg", "fedadam", "fedyogi"), "dp.mode",
           f"central DP adds noise to the sum of updates, which fl.aggregation={cfg.fl.aggregation} does not use; "
           "use fl.aggregation=fedavg (or fedadam/fedyogi), or dp.mode=local with a robust rule")
    for name in cfg.logging.report_to:
        _one_of(name, "logging.report_to", TRACKERS)
    _one_of(cfg.logging.wandb_mode, "logging.wandb_mode", ("offline", "online", "disabled"))


def _trimmed(ratio: float, n: int) -> int:
    """Clients the trimmed mean drops at each end of ``n`` (as fedspear.federation.aggregation.trimmed_mean)."""
    return min(math.floor(ratio * n), (n - 1) // 2)


def _check_trimmed_mean(ratio: float, per_round: int, min_clients: int) -> None:
    """A trimmed mean that trims nothing is FedAvg: fl.trim_ratio must trim at least one client per side of
    fl.clients_per_round, and of fl.min_clients (the fewest results a round aggregates)."""
    if per_round < 3:
        raise ConfigError(f"fl.aggregation=trimmed_mean cannot trim any of fl.clients_per_round={per_round} clients "
                          "(it keeps at least one per coordinate); use fl.clients_per_round>=3 or another rule")
    if _trimmed(ratio, per_round) < 1:
        need = math.ceil(100 / per_round) / 100
        while _trimmed(need, per_round) < 1:
            need += 0.01
        raise ConfigError(f"fl.trim_ratio={ratio} trims 0 of fl.clients_per_round={per_round} clients per side, so "
                          f"fl.aggregation=trimmed_mean is FedAvg; use fl.trim_ratio>={round(need, 2):g}")
    if _trimmed(ratio, min_clients) < 1:
        fewest = next(n for n in range(3, per_round + 1) if _trimmed(ratio, n) >= 1)
        updates = f"{min_clients} update" + ("s" if min_clients != 1 else "")
        raise ConfigError(f"fl.min_clients={min_clients} lets a round aggregate {updates}, of which "
                          f"fl.trim_ratio={ratio} trims 0 per side (FedAvg); use fl.min_clients>={fewest} or a "
                          "larger fl.trim_ratio")


def _check_krum(f: int, per_round: int) -> None:
    """Krum tolerates f Byzantine clients only with n >= 2f + 3 updates (Blanchard et al. 2017, docs/
    privacy-and-robustness.md)."""
    if per_round < 2 * f + 3:
        fix = f"use fl.krum_f<={(per_round - 3) // 2} or " if per_round >= 3 else "use "
        raise ConfigError(f"fl.krum_f={f}: Krum needs fl.clients_per_round >= 2*f + 3 = {2 * f + 3}, got "
                          f"{per_round}; {fix}fl.clients_per_round>={2 * f + 3}")


def _check_multi_krum_m(m: int | None, f: int, per_round: int) -> None:
    """multi-Krum averages m of the n - f best-scored updates."""
    if m is not None and not 1 <= m <= per_round - f:
        raise ConfigError(f"fl.multi_krum_m={m}: multi-Krum averages 1 to fl.clients_per_round - fl.krum_f = "
                          f"{per_round - f} updates; use fl.multi_krum_m in [1, {per_round - f}] or null")


def field_help() -> dict[str, str]:
    """``{"section.key": help}`` for every field, for docs and ``fedspear check --list``."""
    out: dict[str, str] = {}
    for section in dataclasses.fields(Config):
        if section.name == "output_dir":
            out["output_dir"] = section.metadata.get("help", "")
            continue
        if section.name == "extensions":
            continue
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            out[f"{section.name}.{f.name}"] = f.metadata.get("help", "")
    for name, settings in EXTRA_SECTIONS.items():
        for f in dataclasses.fields(settings):
            out[f"{name}.{f.name}"] = f.metadata.get("help", "")
    return out

