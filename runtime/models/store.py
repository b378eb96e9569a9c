"""Resolving the models a node serves: a GGUF path, the embedded default, or a file already in the
models folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import EXIT_USAGE, NodeError
from .embedded import DEFAULT_MODEL_ID
from .embedded import FILENAME as DEFAULT_FILENAME


class ModelSpecError(NodeError):
    """A model to serve that is neither a GGUF file, nor on this machine, nor the embedded default."""

    default_status = 404
    default_code = "model_not_found"
    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class ModelSpec:
    id: str
    path: Path | None  # None: the embedded default, fetched on first use
    embedded_default: bool = False


_QUANT_SUFFIX = re.compile(r"[.-](?:I?Q\d[\w]*|F16|F32|BF16)$", re.IGNORECASE)


def model_id_for_file(path: Path) -> str:
    """The file's stem ('Qwen3-8B-Q4_K_M.gguf' → 'Qwen3-8B-Q4_K_M'), kept whole so two quantizations
    of one model never share an id."""
    return path.stem


def resolve(spec: str, models_dir: Path) -> ModelSpec:
    if spec.lower() == DEFAULT_MODEL_ID.lower():
        return ModelSpec(DEFAULT_MODEL_ID, None, embedded_default=True)
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf" or p.exists() or "/" in spec or "\\" in spec:
        if not p.is_file():
            raise ModelSpecError(f"model file not found: {p}")
        if p.resolve() == (models_dir / DEFAULT_FILENAME).resolve() or p.name == DEFAULT_FILENAME:
            return ModelSpec(DEFAULT_MODEL_ID, p.resolve())
        return ModelSpec(model_id_for_file(p), p.resolve())
    if models_dir.is_dir():
        for f in sorted(models_dir.glob("*.gguf")):
            if spec.lower() in (f.stem.lower(), _QUANT_SUFFIX.sub("", f.stem).lower()):
                mid = DEFAULT_MODEL_ID if f.name == DEFAULT_FILENAME else model_id_for_file(f)
                return ModelSpec(mid, f.resolve())
    raise ModelSpecError(
        f"unknown model '{spec}': give a path to a .gguf file, a model file name in {models_dir}, "
        f"or '{DEFAULT_MODEL_ID}' (the embedded default)."
    )
