"""Checkpoint files on disk: find them, read tensor names and shapes without loading, load, and write.

Weights: ``model.safetensors``, sharded ``model.safetensors.index.json``, and (only with
``torch.load(weights_only=True)``) ``pytorch_model.bin`` / its index.  Key renames live in state_dict_adapter.py.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch

SAFE_INDEX, SAFE_FILE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_FILE = "pytorch_model.bin.index.json", "pytorch_model.bin"


def resolve_directory(path_or_repo_id: str | os.PathLike) -> str:
    """A local checkpoint directory; a Hub repo id only when it is already in the local Hugging Face cache."""
    path = os.fspath(path_or_repo_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{path!r} is a file, not a checkpoint directory (expected config.json + weights)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception as err:  # not a repo id, or not cached: both mean "download it first"
        raise FileNotFoundError(
            f"{path!r} is not a local directory and is not in the local Hugging Face cache; vl3fast does not "
            f"download weights: fetch them first (e.g. `huggingface-cli download {path}`) and pass the directory"
        ) from err


def read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory!r} is not a checkpoint directory: it has no config.json")
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path!r} is not valid JSON ({err}); is {directory!r} a checkpoint?") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} must hold a JSON object, got {type(config).__name__}")
    return config


def weight_files(directory: str) -> list[str]:
    for index in (SAFE_INDEX, BIN_INDEX):
        path = os.path.join(directory, index)
        if os.path.isfile(path):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            files = [os.path.join(directory, s) for s in shards]
            absent = [f for f in files if not os.path.isfile(f)]
            if absent:
                raise FileNotFoundError(f"{index} in {directory!r} names shard files that are absent: {absent}")
            return files
    for single in (SAFE_FILE, BIN_FILE):
        path = os.path.join(directory, single)
        if os.path.isfile(path):
            return [path]
    raise FileNotFoundError(
        f"{directory!r} has no weights: expected {SAFE_FILE}, {SAFE_INDEX}, {BIN_FILE} or {BIN_INDEX}"
    )


def _load_bin(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def tensor_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every stored tensor, read from safetensors headers (no tensor data is loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        else:
            shapes.update({k: tuple(v.shape) for k, v in _load_bin(path).items()})
    return shapes


def iter_tensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            yield from _load_bin(path).items()


def save_safetensors(tensors: dict[str, torch.Tensor], directory: str, max_shard_bytes: int) -> None:
    """One model.safetensors, or shards plus model.safetensors.index.json when over max_shard_bytes."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    shards, current, size = [], {}, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor.detach().contiguous().cpu()
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, SAFE_FILE), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
    with open(os.path.join(directory, SAFE_INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
