"""GGUF weights, dequantized once and cached as plain safetensors.

transformers dequantizes GGUF on every load (about 15 s for the embedded model on 2 cores), so the
dequantized weights are saved once under the user cache directory and later loads read plain
safetensors (well under a second). The cache folder is keyed by the GGUF file's content hash.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headprof import validation
from headprof.errors import HeadprofError, HeadprofWarning
from headprof.fileio import remove_orphans, sha256_file, share_mode, temp_prefix, write_text_atomic
from headprof.models.spec import ModelSpec, first_line, slugify


def cache_dir() -> Path:
    """`$HEADPROF_CACHE`, else `$XDG_CACHE_HOME/headprof`, else `~/.cache/headprof`."""
    root = os.environ.get("HEADPROF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "headprof"
    )
    return Path(root)


def dequantized_dir(spec: ModelSpec) -> Path:
    """Cache folder keyed by the GGUF file's content hash, so a changed file is never served stale weights."""
    gguf = Path(spec.path) / str(spec.gguf_file)
    return cache_dir() / "models" / f"{slugify(gguf.stem)}-{_gguf_key(gguf)}"


_KEY = re.compile(r"[0-9a-f]{16}")


def _gguf_key(gguf: Path) -> str:
    """The first 16 hex digits of the GGUF's hash, remembered in `.keys.json` by path, size and mtime. A key
    that is not 16 hex digits (an edited file mapping a model to `/../../X`) would place the cache folder
    outside the cache: it is ignored and the hash recomputed."""
    gguf = validation.input_file(gguf, "GGUF file", limit=None)
    stamp = cache_dir() / "models" / ".keys.json"
    ident = f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}"
    try:
        known = json.loads(validation.input_file(stamp, "model cache index").read_text())
    except (OSError, ValueError, HeadprofError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if not isinstance(known.get(ident), str) or not _KEY.fullmatch(known[ident]):
        known[ident] = sha256_file(gguf)[:16]
        try:
            write_text_atomic(stamp, json.dumps(known))
        except (HeadprofError, OSError):
            pass  # an unwritable cache only costs a re-hash next time
    return known[ident]


def _dequantize_to_cache(spec: ModelSpec, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers draws a bare tqdm bar on stderr while dequantizing; this one-off step stays quiet so that
    # the first command's output (an error line, --json) is the same as every later command's.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            spec.path, gguf_file=spec.gguf_file, dtype=torch.float32, trust_remote_code=False
        )
    # Dequantized weights are plain float tensors: drop the GGUF marker so save_pretrained accepts them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        share_mode(tmp, directory=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_writable(folder: Path) -> bool:
    """Whether the dequantized cache can be written: its folder (or the nearest existing parent) takes files."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return False
    try:  # root passes os.access everywhere; a read-only mount still refuses the write
        probe = tempfile.TemporaryFile(dir=existing)
    except OSError:
        return False
    probe.close()
    return True


@dataclass(frozen=True)
class Weights:
    """What transformers' `from_pretrained` gets: a folder, plus `gguf_file` when the GGUF is read in memory."""

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def local_weights(spec: ModelSpec) -> Weights:
    """A folder transformers can load: the dequantized cache for GGUF files, else the spec's path.

    When the cache cannot be written (a read-only `HEADPROF_CACHE`), the GGUF is dequantized in memory on
    every load instead, with a notice: slower, but the command runs, and it fails before the conversion
    only if the GGUF itself is unreadable.
    """
    if not spec.gguf_file:
        return Weights(spec.path)
    cached = dequantized_dir(spec)
    if (cached / "config.json").is_file():
        return Weights(str(cached))
    if not cache_writable(cached.parent):
        warnings.warn(
            f"the model cache {cached.parent} is not writable: dequantizing {spec.gguf_file} in memory "
            "(every load; set HEADPROF_CACHE to a writable folder to keep it)",
            HeadprofWarning,
            stacklevel=2,
        )
        return Weights(spec.path, {"gguf_file": spec.gguf_file})
    try:
        _dequantize_to_cache(spec, cached)
    except Exception as exc:  # noqa: BLE001
        raise HeadprofError(f"cannot load GGUF {spec.gguf_file} from {spec.path}: {first_line(exc)}") from None
    return Weights(str(cached))
