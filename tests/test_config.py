"""Tests for fedspear.config: presets, the authors' schema, overrides, coercion and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedspear.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    field_help,
    load_config,
    parse_overrides,
)

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "fedspear" / "configs"
BENCH_YAML = REPO / ".." / "shared" / "bench" / "bench.yaml"
PAPER_PRESETS = [
    f"{ds}-{m}" for ds in ("arc_challenge", "hellaswag", "math_mcqa", "strategy_qa")
    for m in ("qwen2.5-1.5b", "llama3.2-3b")
]


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_loads_and_starts_with_its_launch_command(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    header = path.read_text().splitlines()
    assert header[0].startswith("# ")
    launch = [line for line in header if line.startswith("#") and "fedspear run" in line]
    assert launch, f"{path.name}: the header comment must give the launch command"
    if path.stem != "default":  # default.yaml is run by a bare `fedspear run`
        assert any(f"--config {path.stem}" in line for line in launch)


def test_paper_presets_send_raw_prompts_and_the_real_model_presets_the_chat_template() -> None:
    for name in PAPER_PRESETS:
        assert load_config(PRESETS / f"{name}.yaml").model.chat_template == "off", name
    for task in ("arc_challenge", "hellaswag", "strategy_qa"):
        cfg = load_config(PRESETS / f"{task}-smollm2-135m.yaml")
        assert cfg.model.chat_template == "auto" and cfg.model.model_name == "fedspear/smollm2-135m-instruct"


def test_presets_are_the_expected_set_and_the_repo_root_configs_points_at_them() -> None:
    names = {p.stem for p in PRESETS.glob("*.yaml")}
    real = {f"{task}-smollm2-135m" for task in ("arc_challenge", "hellaswag", "strategy_qa")}
    assert names == {*PAPER_PRESETS, *real, "default", "tiny-arc"}
    root = REPO / "configs"
    assert root.resolve() == PRESETS.resolve()
    assert (root / "default.yaml").read_text() == (PRESETS / "default.yaml").read_text()


# dataset -> rounds, clients/round, P, S, lr, lr_min, max_new, ex/client, mc_hint_words, ul_tail, lose ratio
PER_DATASET = {
    "arc_challenge": (100, 3, 160, 5, 5e-5, 1e-5, 256, 400, 3, 0, 2.0),
    "hellaswag": (50, 5, 160, 10, 5e-5, 1e-5, 256, 400, 3, 0, 2.0),
    "math_mcqa": (50, 3, 80, 5, 5.05e-5, 1e-5, 512, 500, 10, 32, 4.0),
    "strategy_qa": (100, 5, 80, 5, 1e-4, 5e-5, 256, 400, 3, 24, 4.0),
}
# preset -> B, A, seed, max_seq_len, rollout/eval batch, last_n_layers (reference-notes.md section 5, SPEAR column)
PER_RUN = {
    "arc_challenge-qwen2.5-1.5b": (16, 1, 44, 2048, 64, 36),
    "arc_challenge-llama3.2-3b": (8, 2, 44, 2048, 32, 28),
    "hellaswag-qwen2.5-1.5b": (16, 1, 43, 2048, 64, 36),
    "hellaswag-llama3.2-3b": (8, 2, 44, 2048, 32, 28),
    "math_mcqa-qwen2.5-1.5b": (4, 4, 44, 2048, 32, 36),
    "math_mcqa-llama3.2-3b": (4, 4, 44, 2048, 32, 28),
    "strategy_qa-qwen2.5-1.5b": (16, 1, 43, 1024, 32, 36),
    "strategy_qa-llama3.2-3b": (16, 1, 44, 1024, 32, 36),
}


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_preset_values(name: str) -> None:
    cfg = load_config(PRESETS / f"{name}.yaml")
    dataset = name.split("-")[0]
    rounds, k, p, s, lr, lr_min, max_new, ex, hint, tail, lose_ratio = PER_DATASET[dataset]
    b, a, seed, seq, bs, last_n = PER_RUN[name]
    assert cfg.data.dataset == dataset
    assert cfg.model.model_name == ("Qwen/Qwen2.5-1.5B" if "qwen" in name else "meta-llama/Llama-3.2-3B")
    assert (cfg.algorithm.name, cfg.model.dtype, cfg.model.max_seq_len) == ("spear", "bf16", seq)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.last_n_layers) == (16, 32, 0.1, last_n)
    assert (cfg.data.num_clients, cfg.data.dirichlet_alpha, cfg.data.max_examples_per_client) == (50, 1.0, ex)
    assert (cfg.data.seed, cfg.data.eval_every, cfg.data.eval_every_round_up_to) == (seed, 5, 1)
    assert (cfg.fl.rounds, cfg.fl.clients_per_round, cfg.fl.local_rollout_steps, cfg.fl.local_train_steps) == (
        rounds, k, p, s)
    assert (cfg.gen.max_new_tokens_y0, cfg.gen.max_new_tokens_y1, cfg.gen.num_revisions) == (max_new, max_new, 2)
    assert (cfg.gen.do_sample, cfg.gen.temperature, cfg.gen.top_p) == (True, 0.8, 0.95)
    assert (cfg.gen.rollout_batch_size, cfg.gen.eval_batch_size) == (bs, bs)
    assert (cfg.spear.lambda_win, cfg.spear.lambda_lose, cfg.spear.lambda_anchor) == (1.0, 0.1, 0.0)
    assert (cfg.spear.unlikelihood_margin, cfg.spear.ul_tail_tokens, cfg.spear.max_lose_ratio) == (0.3, tail, lose_ratio)
    assert cfg.spear.ul_skip_math_ops is (dataset == "math_mcqa")
    assert (cfg.optim.lr, cfg.optim.lr_min, cfg.optim.batch_size, cfg.optim.grad_accum_steps) == (lr, lr_min, b, a)
    assert cfg.optim.batch_size * cfg.optim.grad_accum_steps == 16
    assert (cfg.optim.weight_decay, cfg.optim.use_warmup, cfg.optim.warmup_ratio) == (0.0, True, 0.1)
    assert (cfg.feedback.provider, cfg.feedback.mc_hint_words) == ("oracle", hint)


def test_default_preset_is_the_offline_world() -> None:
    cfg = load_config(PRESETS / "default.yaml")
    assert (cfg.data.dataset, cfg.model.model_name, cfg.model.dtype) == ("world", "fedspear/world-base", "fp32")
    assert cfg.data.path is None


def test_tiny_arc_points_at_the_shared_data_and_takes_a_model_override() -> None:
    cfg = load_config(PRESETS / "tiny-arc.yaml", ["model.model_name=/models/small"])
    assert (cfg.data.dataset, cfg.data.path, cfg.model.model_name) == (
        "arc_challenge", "../shared/data/arc_challenge", "/models/small")


# --------------------------------------------------------------------------- the authors' schema

# Every section and key of the authors' config.py with its default there (reference-notes.md section 3),
# including the fields they only read via getattr (fl.server_*, gen.eval_*).
AUTHORS_FULL = """
output_dir: runs/exp
algorithm:
  name: spear
model:
  model_name: Qwen/Qwen2.5-1.5B
  tokenizer_name: null
  trust_remote_code: true
  max_seq_len: 2048
  dtype: bf16
  device_map: auto
  load_in_4bit: false
  gradient_checkpointing: true
lora:
  r: 16
  alpha: 32
  dropout: 0.05
  bias: none
  last_n_layers: 6
  target_modules: []
data:
  dataset: arc_challenge
  split: train
  eval_split: null
  eval_fraction: 0.02
  max_attempts: 3
  num_clients: 20
  dirichlet_alpha: 0.3
  dirichlet_num_classes: 10
  max_examples_per_client: 500
  seed: 42
  eval_every: 5
  eval_every_round_up_to: 10
fl:
  rounds: 20
  clients_per_round: 5
  local_train_steps: 50
  local_rollout_steps: 25
  aggregation: fedavg
  fedprox_mu: 0.0
  server_lr: 1.0e-2
  server_beta1: 0.9
  server_beta2: 0.99
  server_tau: 5.0e-3
gen:
  max_new_tokens_y0: 256
  max_new_tokens_y1: 256
  num_revisions: 1
  do_sample: false
  temperature: 0.7
  top_p: 0.95
  rollout_batch_size: 8
  eval_batch_size: 8
  eval_do_sample: false
  eval_temperature: 0.0
  eval_top_p: 1.0
spear:
  lambda_win: 1.0
  lambda_lose: 0.3
  lambda_anchor: 0.01
  unlikelihood_margin: 0.1
  ema_decay: 0.0
  ul_answer_only: false
  ul_tail_tokens: 0
  ul_skip_math_ops: false
  max_lose_ratio: 2.0
grpo:
  num_generations: 4
  beta_kl: 0.02
  clip_range: 0.2
  normalize_advantage: true
  reward_scale: 1.0
  reward_clip: null
rltf_sd:
  gamma: 1.0
  sd_coeff: 0.1
  rl_coeff: 1.0
  early_termination: true
distill:
  temperature: 2.0
  kl_weight: 1.0
  anchor_weight: 0.0
  priv_max_chars: 2000
  feedback_max_chars: 800
  num_demos: 1
  demo_max_chars: 1800
optim:
  lr: 2.0e-4
  weight_decay: 1.0e-3
  batch_size: 1
  grad_accum_steps: 4
  max_grad_norm: 1.0
  warmup_ratio: 0.1
  lr_min: 1.0e-5
  use_warmup: false
  micro_batch_size: null
feedback:
  provider: oracle
  mc_hint_words: 3
hf:
  offline: false
  hf_home: null
  model_cache_dir: null
  dataset_cache_dir: null
  hub_cache_dir: null
"""


def test_a_config_with_every_key_of_the_authors_schema_loads_unchanged(tmp_path: Path) -> None:
    from fedspear.config_compat import IGNORED, RLTF_SD_FROM

    path = tmp_path / "authors.yaml"
    path.write_text(AUTHORS_FULL)
    cfg = load_config(path)
    written = yaml.safe_load(AUTHORS_FULL)
    resolved = cfg.to_dict()
    for section, values in written.items():
        if not isinstance(values, dict):
            assert resolved[section] == values
            continue
        for key, value in values.items():
            if key in IGNORED.get(section, ()):  # unused here: dropped by the translation, with a warning
                assert key not in resolved[section]
                continue
            target, moved = RLTF_SD_FROM.get((section, key), (key, False))
            assert resolved["rltf_sd" if moved else section][target] == value, f"{section}.{key}"
    # the values that differ from this project's defaults really came from the file
    assert cfg.model.model_name == "Qwen/Qwen2.5-1.5B" and cfg.model.trust_remote_code is True
    assert (cfg.fl.server_tau, cfg.gen.eval_temperature, cfg.grpo.reward_clip) == (5e-3, 0.0, None)


def test_the_shared_bench_config_loads() -> None:
    if not BENCH_YAML.is_file():
        pytest.skip(f"shared bench config not found at {BENCH_YAML}")
    cfg = load_config(BENCH_YAML)
    assert cfg.model.model_name == "BENCH_DIR/model"  # a placeholder string, not checked at load time
    assert (cfg.lora.r, cfg.data.num_clients, cfg.fl.rounds, cfg.optim.batch_size) == (8, 10, 2, 16)
    assert cfg.output_dir == "runs/bench"


# --------------------------------------------------------------------------- overrides and coercion


def test_parse_overrides_keeps_raw_text_nested_by_section() -> None:
    assert parse_overrides(["fl.rounds=3", "output_dir=a=b", "model.model_name=/p/m"]) == {
        "fl": {"rounds": "3"}, "output_dir": "a=b", "model": {"model_name": "/p/m"}}


def test_dotted_overrides_of_every_kind() -> None:
    cfg = load_config(None, [
        "fl.rounds=3", "model.model_name=/path/to/model", "output_dir=x", "lora.target_modules=[q_proj,v_proj]",
        "optim.lr=5e-5", "gen.do_sample=yes", "model.tokenizer_name=null", "grpo.reward_clip=2",
    ])
    assert cfg.fl.rounds == 3 and isinstance(cfg.fl.rounds, int)
    assert cfg.model.model_name == "/path/to/model"
    assert cfg.output_dir == "x"
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.optim.lr == 5e-5
    assert cfg.gen.do_sample is True
    assert cfg.model.tokenizer_name is None
    assert cfg.grpo.reward_clip == 2.0 and isinstance(cfg.grpo.reward_clip, float)


@pytest.mark.parametrize(("text", "expected"), [
    ("[q_proj, v_proj]", ["q_proj", "v_proj"]), ("q_proj,v_proj", ["q_proj", "v_proj"]), ("[]", []), ("", []),
])
def test_list_override_forms(text: str, expected: list[str]) -> None:
    assert load_config(None, [f"lora.target_modules={text}"]).lora.target_modules == expected


def test_string_fields_keep_exactly_what_was_typed() -> None:
    # YAML would read 1.10 as the float 1.1 and "yes" as True; a string field must not.
    cfg = load_config(None, ["model.model_name=1.10", "output_dir=yes"])
    assert (cfg.model.model_name, cfg.output_dir) == ("1.10", "yes")


@pytest.mark.parametrize(("value", "expected"), [("7", 7), ("7.0", 7), ("1e3", 1000), (" 12 ", 12)])
def test_integer_text_forms(value: str, expected: int) -> None:
    assert load_config(None, [f"fl.rounds={value}"]).fl.rounds == expected


def test_yaml_numbers_coerce_to_the_field_type(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("fl:\n  rounds: 4.0\noptim:\n  lr: 1e-4\n  batch_size: 2\nlora:\n  alpha: 8\n")
    cfg = load_config(path)
    assert cfg.fl.rounds == 4 and isinstance(cfg.fl.rounds, int)
    assert cfg.optim.lr == 1e-4  # PyYAML reads 1e-4 (no dot) as a string; the float field converts it
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)


def test_apply_overrides_changes_an_existing_config_and_validates() -> None:
    cfg = load_config(None)
    apply_overrides(cfg, ["fl.rounds=7", "data.seed=3"])
    assert (cfg.fl.rounds, cfg.data.seed) == (7, 3)
    with pytest.raises(ConfigError, match="fl.clients_per_round"):
        apply_overrides(cfg, ["data.num_clients=2"])  # 5 clients per round > 2 clients


def test_to_yaml_round_trips_through_config_from_dict() -> None:
    cfg = load_config(PRESETS / "math_mcqa-llama3.2-3b.yaml", ["lora.target_modules=[q_proj]", "data.path=/d"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_field_help_covers_every_field_with_text() -> None:
    helps = field_help()
    expected = {f"{s}.{k}" for s, v in Config().to_dict().items() if isinstance(v, dict) for k in v}
    assert set(helps) == expected | {"output_dir"}
    assert all(text.strip() for text in helps.values())
    assert helps["fl.rounds"] == "federated rounds"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("override", "suggestion"), [
    ("fl.round=3", "fl.rounds"),           # typo of a key
    ("fl.seed=3", "data.seed"),            # a key in the wrong section
    ("rounds=3", "fl.rounds"),             # a key without its section
    ("fll.rounds=3", "'fl'"),              # typo of a section
    ("spear.lambda_loose=0.2", "spear.lambda_lose"),
])
def test_unknown_keys_name_the_closest_valid_one(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith("override: unknown ")
    assert f"did you mean {suggestion}" in message or f"did you mean '{suggestion}'" in message
    assert "fedspear check --list" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'optim.learning_rate' \(did you mean 'optim.lr"):
        load_config(path)


@pytest.mark.parametrize(("override", "pattern"), [
    ("fl.rounds=abc", r"fl\.rounds: expected an integer, got 'abc'; write e\.g\. fl\.rounds=3"),
    ("fl.rounds=3.5", r"fl\.rounds: expected an integer, got '3\.5'"),
    ("optim.lr=fast", r"optim\.lr: expected a number, got 'fast'"),
    ("optim.lr=nan", r"optim\.lr: expected a number, got 'nan'"),
    ("gen.do_sample=maybe", r"gen\.do_sample: expected true or false, got 'maybe'"),
    ("lora.target_modules=[q_proj", r"lora\.target_modules: cannot read '\[q_proj' as a list"),
    ("algorithm.name=ppo", r"algorithm\.name: 'ppo' is not one of spear, feedback_sft, grpo, opsd, rltf_sd"),
    ("model.dtype=float32", r"model\.dtype: 'float32' is not one of fp32, bf16, fp16, auto"),
    ("fl.rounds=0", r"fl\.rounds: must be > 0, got 0"),
    ("optim.lr=-1e-4", r"optim\.lr: must be >= 0"),
    ("spear.unlikelihood_margin=1", r"spear\.unlikelihood_margin: must be in \[0, 1\)"),
    ("fl.clients_per_round=30", r"fl\.clients_per_round: 30 > data\.num_clients=20; lower it or add clients"),
    ("optim.micro_batch_size=0", r"optim\.micro_batch_size: must be > 0 or null"),
    ("fl=3", r"'fl' is a section, not a value"),
    ("fl.rounds", r"override 'fl\.rounds' is not KEY=VALUE"),
    ("a.b.c=1", r"override key 'a\.b\.c' must be SECTION\.KEY"),
])
def test_bad_values_name_the_key_and_the_fix(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_sampling_needs_a_positive_temperature() -> None:
    assert load_config(None, ["gen.do_sample=false", "gen.temperature=0"]).gen.temperature == 0.0
    with pytest.raises(ConfigError, match="gen.temperature: must be > 0 when sampling"):
        load_config(None, ["gen.do_sample=true", "gen.temperature=0"])
    with pytest.raises(ConfigError, match="gen.eval_temperature"):
        load_config(None, ["gen.eval_do_sample=true", "gen.eval_temperature=0"])


@pytest.mark.parametrize(("text", "pattern"), [
    ("fl: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("model:\n  model_name:\n", r"model\.model_name: expected a string, got None"),
])
def test_malformed_files(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found: /no/such.yaml"):
        load_config("/no/such.yaml")


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.aggregation=trimmed_mean"],  # the defaults: trim_ratio 0.1 of 5 clients trims floor(0.5) = 0 per side
     "fl.trim_ratio=0.1 trims 0 of fl.clients_per_round=5 clients per side, so fl.aggregation=trimmed_mean is FedAvg; "
     "use fl.trim_ratio>=0.2"),
    (["fl.aggregation=trimmed_mean", "fl.trim_ratio=0.33", "fl.clients_per_round=3", "fl.min_clients=3"],
     "fl.trim_ratio=0.33 trims 0 of fl.clients_per_round=3 clients per side, so fl.aggregation=trimmed_mean is "
     "FedAvg; use fl.trim_ratio>=0.34"),
    (["fl.aggregation=trimmed_mean", "fl.trim_ratio=0.2"],  # 5 per round, but a round may aggregate only 1
     "fl.min_clients=1 lets a round aggregate 1 update, of which fl.trim_ratio=0.2 trims 0 per side (FedAvg); use "
     "fl.min_clients>=5 or a larger fl.trim_ratio"),
    (["fl.aggregation=trimmed_mean", "fl.trim_ratio=0.4", "fl.min_clients=2"],
     "fl.min_clients=2 lets a round aggregate 2 updates, of which fl.trim_ratio=0.4 trims 0 per side (FedAvg); use "
     "fl.min_clients>=3 or a larger fl.trim_ratio"),
    (["fl.aggregation=trimmed_mean", "fl.trim_ratio=0.4", "fl.clients_per_round=2"],
     "fl.aggregation=trimmed_mean cannot trim any of fl.clients_per_round=2 clients (it keeps at least one per "
     "coordinate); use fl.clients_per_round>=3 or another rule"),
    (["fl.aggregation=krum", "fl.krum_f=2"],
     "fl.krum_f=2: Krum needs fl.clients_per_round >= 2*f + 3 = 7, got 5; use fl.krum_f<=1 or "
     "fl.clients_per_round>=7"),
    (["fl.aggregation=multi_krum", "fl.krum_f=0", "fl.clients_per_round=2", "fl.min_clients=1"],
     "fl.krum_f=0: Krum needs fl.clients_per_round >= 2*f + 3 = 3, got 2; use fl.clients_per_round>=3"),
    (["fl.aggregation=multi_krum", "fl.multi_krum_m=5"],
     "fl.multi_krum_m=5: multi-Krum averages 1 to fl.clients_per_round - fl.krum_f = 4 updates; use "
     "fl.multi_krum_m in [1, 4] or null"),
])
def test_check_refuses_robust_rules_that_cannot_hold(capsys: pytest.CaptureFixture[str], overrides: list[str],
                                                     message: str) -> None:
    from fedspear import cli

    assert cli.main(["check", *overrides]) == 2
    assert capsys.readouterr().err.strip() == f"fedspear: error: {message}"


@pytest.mark.parametrize("overrides", [
    ["fl.aggregation=trimmed_mean", "fl.trim_ratio=0.2", "fl.min_clients=5"],  # 1 of 5 per side
    ["fl.aggregation=trimmed_mean", "fl.trim_ratio=0.34", "fl.min_clients=3"],  # 1 of 3..5 per side
    ["fl.aggregation=krum", "fl.krum_f=1"],  # 5 >= 2 * 1 + 3
    ["fl.aggregation=multi_krum", "fl.krum_f=1", "fl.multi_krum_m=4"],
    ["fl.aggregation=fedavg", "fl.trim_ratio=0.1"],  # trim_ratio unused
])
def test_check_accepts_robust_rules_that_hold(capsys: pytest.CaptureFixture[str], overrides: list[str]) -> None:
    from fedspear import cli

    assert cli.main(["check", *overrides]) == 0
    assert capsys.readouterr().err == ""


def test_a_valid_trimmed_mean_drops_the_outlier_fedavg_keeps() -> None:
    import torch

    from fedspear.federation.aggregation import trimmed_mean

    states = [{"w": torch.tensor([v])} for v in (1.0, 1.0, 1.0, 1.0, -10.0)]  # one client sends -10x
    assert trimmed_mean(states, 0.2)["w"].item() == 1.0  # 0.2 of 5 trims 1 per side: the outlier is gone
    assert trimmed_mean(states, 0.1)["w"].item() == pytest.approx(-6 / 5)  # 0.1 trims 0: the FedAvg mean
