"""HF model directories: config.json plus safetensors, read lazily, one tensor at a time.

`open_model` returns the `model` object that ExLlamaV2RMSNorm expects: `.config.norm_eps`,
`.config.arch.lm.norm_constant_bias`, `.get_tensor(key, device)`, `.tp_context`. Only the file
headers are read up front; a tensor is read from disk when asked for, on the CPU, and moved to its
device once. `save_checkpoint` writes such a directory (for the demo and the tests).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import write_atomic, write_text_atomic
from .validate import materialized

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# exllamav2's norm_constant_bias=1 list: these store w where the model scales by (1 + w).
# Gemma3n is absent on purpose: its norms scale by w.
GEMMA_ARCHITECTURES = frozenset({"GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
                                 "Gemma3ForConditionalGeneration", "GemmoeForCausalLM"})
GEMMA_MODEL_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "gemmoe"})
# exllamav2 gives Gemma3 a default eps; every other architecture must state rms_norm_eps.
GEMMA3_NAMES = frozenset({"Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "gemma3",
                          "gemma3_text"})
GEMMA3_DEFAULT_EPS = 1e-6


@dataclass(frozen=True)
class ArchParams:
    norm_constant_bias: float = 0.0


@dataclass(frozen=True)
class Arch:
    lm: ArchParams


@dataclass(frozen=True)
class ModelConfig:
    path: Path                   # the config.json it was read from
    raw: dict
    names: frozenset             # architectures and model_types, top level and text_config
    norm_eps: float
    hidden_size: Optional[int]
    arch: Arch


class Checkpoint:
    """A model directory's tensors by key; see open_model."""

    def __init__(self, directory: Path, config: ModelConfig, files: dict[str, Path],
                 device: torch.device):
        self.directory = directory
        self.config = config
        self.device = device
        self.tp_context = None          # a TPContext, once the caller sets one
        self._files = files             # tensor key -> the safetensors file holding it

    def keys(self) -> list[str]:
        return list(self._files)

    def has_tensor(self, key: str) -> bool:
        return key in self._files

    def get_tensor(self, key: str, device=None) -> torch.Tensor:
        """The tensor in its stored dtype, on `device` (default: the model's device)."""
        path = self._files.get(key)
        if path is None:
            raise KeyError(f"tensor {key!r} not found in {self.directory}")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            t = f.get_tensor(key)
        return t.to(torch.device(device) if device is not None else self.device)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.directory)!r}, {len(self._files)} tensors)"


def open_model(path, device=None) -> Checkpoint:
    """Open an HF model directory: config.json and model.safetensors, shards, or an index."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist or is not a "
                                "directory")
    config = read_config(directory / CONFIG_NAME)
    files = _tensor_files(directory)
    return Checkpoint(directory, config, files,
                      torch.device(device) if device is not None else torch.device("cpu"))


def read_config(path: Path) -> ModelConfig:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a model directory needs a config.json")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    text = raw.get("text_config")
    sections = [raw] + ([text] if isinstance(text, dict) else [])
    names = set()
    for s in sections:
        archs = s.get("architectures")
        names.update(a for a in (archs if isinstance(archs, list) else []) if isinstance(a, str))
        if isinstance(s.get("model_type"), str):
            names.add(s["model_type"])
    gemma = bool(names & (GEMMA_ARCHITECTURES | GEMMA_MODEL_TYPES))
    hidden = next((s["hidden_size"] for s in sections if isinstance(s.get("hidden_size"), int)),
                  None)
    return ModelConfig(path=path, raw=raw, names=frozenset(names),
                       norm_eps=_norm_eps(path, sections, names), hidden_size=hidden,
                       arch=Arch(lm=ArchParams(norm_constant_bias=1.0 if gemma else 0.0)))


def _norm_eps(path: Path, sections: list[dict], names: set) -> float:
    """rms_norm_eps, else text_config.rms_norm_eps (ints as floats), as exllamav2 reads it."""
    for s in sections:
        eps = s.get("rms_norm_eps")
        if eps is None:
            continue
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) \
                or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"{path}: rms_norm_eps must be a finite number >= 0, got {eps!r}")
        return float(eps)
    if names & GEMMA3_NAMES:
        return GEMMA3_DEFAULT_EPS
    raise ValueError(f"{path} has no rms_norm_eps (top level or text_config), and only Gemma3 "
                     f"has a default; architectures/model_type: {sorted(names) or 'none'}")


def _tensor_files(directory: Path) -> dict[str, Path]:
    index = directory / INDEX_NAME
    if index.is_file():
        return _read_index(index)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} has no *.safetensors file and no {INDEX_NAME}")
    where: dict[str, Path] = {}
    for f in files:
        for key in _header_keys(f):
            if key in where:
                raise ValueError(f"tensor {key!r} is in both {where[key].name} and {f.name} "
                                 f"in {directory}; add a {INDEX_NAME} to say which")
            where[key] = f
    return where


def _header_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error type for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _read_index(index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{index} is not a JSON object: {e}") from e
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ValueError(f"{index} must have a \"weight_map\" object mapping tensor names to "
                         f"file names, got {type(weight_map).__name__}")
    files = {name: index.parent / name for name in set(weight_map.values())}
    missing = sorted(name for name, p in files.items() if not p.is_file())
    if missing:
        raise ValueError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
    return {key: files[name] for key, name in weight_map.items()}


# ---- writing -----------------------------------------------------------------------------------

def save_checkpoint(directory, config: dict, tensors: dict[str, torch.Tensor], *,
                    shards: int = 1, write_index: bool = True) -> Path:
    """Write config.json and safetensors into `directory` (created if needed).

    shards=1 writes model.safetensors; more writes model-0000i-of-0000n.safetensors and, with
    write_index, model.safetensors.index.json. Every file is written to a temporary name in the
    same directory and renamed into place, so a reader never sees half a file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    most = max(1, len(tensors))
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= most:
        raise ValueError(f"shards must be an int in [1, {most}] (the tensor count), "
                         f"got {shards!r}")
    keys = list(tensors)
    weight_map = {}
    for i in range(shards):
        name = SINGLE_NAME if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        # safetensors writes memory as it is: values, not a negative view's -t.
        part = {k: materialized(tensors[k].detach()).cpu() for k in keys[i::shards]}
        write_atomic(directory / name, lambda tmp, part=part: save_file(part, tmp))
        weight_map.update(dict.fromkeys(part, name))
    if shards > 1 and write_index:
        text = json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1)
        write_text_atomic(directory / INDEX_NAME, text)
    text = json.dumps(config, indent=1)
    write_text_atomic(directory / CONFIG_NAME, text)
    return directory
