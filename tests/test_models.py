"""Model loading, LoRA placement and adapter state."""

from __future__ import annotations

import torch

from fedspear.config import load_config
from fedspear.models import AdapterHandle, attach_lora, load_base_model, load_tokenizer, lora_target_modules


def _cfg(model_dir, **kw):
    over = {"model.model_name": str(model_dir), "model.dtype": "fp32", "model.device_map": "cpu",
            "model.gradient_checkpointing": False, "lora.r": 4, "lora.alpha": 8, "lora.last_n_layers": 1}
    over.update(kw)
    return load_config(None, [f"{k}={v}" for k, v in over.items()])


def test_lora_targets_last_layers_all_projections(tiny_qwen, tiny_llama):
    for model_dir in (tiny_qwen, tiny_llama):
        cfg = _cfg(model_dir)
        model = load_base_model(cfg, torch.device("cpu"))
        names, family = lora_target_modules(model, cfg.lora)
        assert family == "llama/qwen/mistral"
        # last_n_layers=1 of 2 -> only block 1, all 7 projections
        assert len(names) == 7 and all(".layers.1." in n for n in names)
        cfg.lora.last_n_layers = 5  # more than the model has -> all layers
        assert len(lora_target_modules(model, cfg.lora)[0]) == 14


def test_bf16_weights_stay_bf16(tiny_qwen):
    model = load_base_model(_cfg(tiny_qwen, **{"model.dtype": "bf16"}), torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_tokenizer_left_padding_and_pad(tiny_llama):
    tok = load_tokenizer(_cfg(tiny_llama))
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # Llama-style BOS kept consistently


def test_adapter_state_copies_share_no_memory(tiny_qwen):
    cfg = _cfg(tiny_qwen)
    model = attach_lora(load_base_model(cfg, torch.device("cpu")), cfg, seed=0)
    handle = AdapterHandle.from_model(model)
    state = handle.get()
    live = {p.data_ptr() for p in handle.params.values()}
    assert not any(t.data_ptr() in live for t in state.values())
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        for p in handle.params.values():
            p.add_(1.0)
    assert all(torch.equal(before[k], state[k]) for k in state)  # training the live model leaves copies alone
    handle.set(before)
    assert all(torch.equal(handle.get()[k], before[k]) for k in before)


def test_attach_lora_causes_no_future_warning(tiny_qwen):
    import warnings

    cfg = load_config(None, [f"model.model_name={tiny_qwen}", "model.dtype=fp32"])
    base = load_base_model(cfg, torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attach_lora(base, cfg, seed=0)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


def test_cap_max_seq_len_returns_the_cap_and_fit_config_copies(tiny_qwen):
    from types import SimpleNamespace

    import pytest

    from fedspear.config import ConfigError
    from fedspear.models import cap_max_seq_len, fit_config

    def model(positions):
        return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions))

    cfg = load_config(None, [f"model.model_name={tiny_qwen}", "model.max_seq_len=2048"])
    assert cap_max_seq_len(cfg, model(1024)) == 1024 and cfg.model.max_seq_len == 2048  # the config is not written
    assert cap_max_seq_len(cfg, model(4096)) == 2048
    with pytest.raises(ConfigError, match="gen.max_new_tokens"):  # 64 positions leave no room for 256 new tokens
        cap_max_seq_len(cfg, model(64))
    assert cfg.model.max_seq_len == 2048
    fitted = fit_config(cfg, SimpleNamespace(max_seq_len=1024))
    assert fitted.model.max_seq_len == 1024 and cfg.model.max_seq_len == 2048 and fitted.model is not cfg.model
    assert fit_config(cfg, SimpleNamespace(max_seq_len=2048)) is cfg
