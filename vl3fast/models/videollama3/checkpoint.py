"""Checkpoint files on disk: find them, read tensor names and shapes without loading, load, and write.

Weights: ``model.safetensors``, sharded ``model.safetensors.index.json``, and (only with
``torch.load(weights_only=True)``, so no pickle payload runs) ``pytorch_model.bin`` / its index.
Key renames live in state_dict_adapter.py.

Safety: an index may only name shard files inside the checkpoint folder; a damaged or unreadable weight file
raises `CheckpointError` naming the file; only floating-point weights are accepted.  Saving is atomic: the
checkpoint is written into a temporary folder beside the target and renamed into place (`atomic_directory`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator

import torch

SAFE_INDEX, SAFE_FILE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_FILE = "pytorch_model.bin.index.json", "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, unreadable, escapes its folder or holds the wrong kind of tensor."""


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
            shards = _index_shards(path)
            files = [_inside(directory, s, path) for s in shards]
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


def _index_shards(index_path: str) -> list[str]:
    try:
        with open(index_path) as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index_path!r} is not a valid weight index (expected a JSON object with a "
                              f"'weight_map' of tensor name -> shard file): {err!r}") from err
    bad = [s for s in shards if not isinstance(s, str) or not s]
    if bad:
        raise CheckpointError(f"{index_path!r} names shard files that are not file names: {bad}")
    return shards


def _inside(directory: str, name: str, index_path: str) -> str:
    """The shard path, refusing names that leave the checkpoint folder (``../x``, ``/etc/passwd``, symlinks out)."""
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, path]) != root:
        raise CheckpointError(f"{index_path!r} names shard file {name!r} outside the checkpoint folder {directory!r}")
    return path


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _load_bin(path: str) -> dict:
    try:  # weights_only: tensors and plain containers only, never an arbitrary pickle payload
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for damaged files
        raise CheckpointError(f"cannot read weight file {path!r}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weight file {path!r} does not hold a flat dict of tensors")
    return state


@contextlib.contextmanager
def _reading(path: str):
    """Names the file in any error the safetensors reader raises (its own SafetensorError names none)."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot read weight file {path!r} (damaged or not safetensors): "
                              f"{type(err).__name__}: {err}") from err


def _check_float(path: str, key: str, dtype: str) -> None:
    if dtype not in _FLOAT_DTYPES and dtype not in ("torch.float64", "torch.float32", "torch.float16",
                                                    "torch.bfloat16"):
        raise CheckpointError(f"weight {key!r} in {path!r} has dtype {dtype}; VideoLLaMA3 weights are floating "
                              f"point (one of {', '.join(_FLOAT_DTYPES)})")


def tensor_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every stored tensor, read from safetensors headers (no tensor data is loaded).
    Also checks that every tensor is floating point and that each file's header is readable."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.endswith(".safetensors"):
            with _reading(path), safe_open(path, framework="pt") as f:
                for key in f.keys():
                    tensor_slice = f.get_slice(key)
                    _check_float(path, key, tensor_slice.get_dtype())
                    shapes[key] = tuple(tensor_slice.get_shape())
        else:
            for key, tensor in _load_bin(path).items():
                _check_float(path, key, str(tensor.dtype))
                shapes[key] = tuple(tensor.shape)
    return shapes


def iter_tensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        if path.endswith(".safetensors"):
            with _reading(path):
                handle = safe_open(path, framework="pt")
            with handle as f:
                for key in f.keys():
                    with _reading(path):
                        tensor = f.get_tensor(key)
                    yield key, tensor
        else:
            yield from _load_bin(path).items()


# Files a save writes (or that an earlier save of another layout wrote): never carried over from an old target.
def _is_checkpoint_file(name: str) -> bool:
    return (name in ("config.json", "generation_config.json", SAFE_INDEX, BIN_INDEX, SAFE_FILE, BIN_FILE)
            or (name.startswith("model-") and name.endswith(".safetensors"))
            or (name.startswith("pytorch_model-") and name.endswith(".bin")))


_TMP_MARK = ".vl3fast-tmp-"


def _remove_stale_temporaries(parent: str, base: str) -> None:
    """Temporary folders of earlier saves into the same target whose process is gone (killed mid-save)."""
    prefix = f".{base}{_TMP_MARK}"
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        alive = pid.isdigit() and _pid_alive(int(pid))
        if not alive:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_directory(directory: str):
    """Yields a fresh temporary folder beside ``directory``; on success it replaces ``directory``.

    The result is never a mixture of two saves: weights, index and config of an earlier save (of any layout)
    do not survive, while other files the user keeps there (tokenizer, processor files, a README) are carried
    over. On an error the temporary folder is removed and ``directory`` is left as it was; a save killed
    outright leaves only a hidden ``.NAME.vl3fast-tmp-PID-*`` folder, removed by the next save into NAME.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent, base = os.path.split(directory.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"cannot save a checkpoint to {directory!r}: it is a file, not a folder")
    _remove_stale_temporaries(parent, base)
    import tempfile

    tmp = tempfile.mkdtemp(prefix=f".{base}{_TMP_MARK}{os.getpid()}-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                src, dst = os.path.join(directory, name), os.path.join(tmp, name)
                if _is_checkpoint_file(name) or os.path.exists(dst):
                    continue
                if os.path.isdir(src) and not os.path.islink(src):
                    shutil.copytree(src, dst, symlinks=True)
                else:
                    shutil.copy2(src, dst, follow_symlinks=False)
            old = tempfile.mkdtemp(prefix=f".{base}{_TMP_MARK}{os.getpid()}-old-", dir=parent)
            os.rmdir(old)
            os.rename(directory, old)  # two renames: the target is complete before and after, missing only between
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_safetensors(tensors: dict[str, torch.Tensor], directory: str, max_shard_bytes: int) -> None:
    """One model.safetensors, or shards plus model.safetensors.index.json when over max_shard_bytes.
    ``directory`` should be a fresh folder (see `atomic_directory`)."""
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
