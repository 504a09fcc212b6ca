"""Training configuration: YAML files with ``inherit:``, ``--set a.b=c`` overrides, checked against a schema.

    cfg = load_config("training/configs/stage3.yaml", overrides=["run.out=runs/s3", "train.max_steps=10"])
    cfg.train.lr["vision"]      # 2e-06
    write_resolved(cfg, "runs/s3/resolved.yaml")

A file may name one parent (``inherit: base_2b.yaml``, relative to the file, or a list of them applied in
order); its own keys are merged over the parent's, recursively for mappings.  ``deepspeed.config`` is
relative to the file that sets it; checkpoint, data and run paths to the working directory.  ``null`` removes nothing: it is
a value (``lr.llm: null`` freezes the LLM).  Every key must be in the schema below: an unknown key is an
error naming it, the file it came from and the keys that are allowed there; a value of the wrong type is an
error naming key, file and expected type.  YAML 1.1 reads ``1e-5`` (no dot) as a string: float fields accept
such strings when they parse as a number, nothing else is coerced.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

# Modules that carry their own learning rate (spec G): the vision encoder, the projector, the LLM
# (embeddings, decoder layers, final norm and lm_head).
MODULE_GROUPS = ("vision", "projector", "llm")


class ConfigError(ValueError):
    """A configuration problem: the message names the key and the file it came from."""


@dataclass
class ModelConfig:
    preset: str = "2b"                    # architecture (VideoLLaMA3Config.from_name); checked against init
    init: str | None = None               # checkpoint folder to start from (previous stage's export)
    random_init: bool = False             # no init: random weights of the preset shape (smoke tests)
    text_layers: int | None = None        # fewer LLM layers (random_init only)
    vision_layers: int | None = None      # fewer vision layers (random_init only)
    processor: str | None = None          # tokenizer + processor files; default: init
    attn_backend: str = "vl3fast"
    gradient_checkpointing: bool = True
    dtype: str = "auto"                   # auto: bfloat16 on GPU, float32 on CPU; or float32 / bfloat16


@dataclass
class DataConfig:
    annotations: list[str] = field(default_factory=list)   # JSON / JSONL files (official or messages schema)
    data_folder: str | None = None         # media root
    max_tokens: int = 16384                # LLM token budget of one packed micro-batch
    max_patches: int = 65536               # vision patch budget of one packed micro-batch
    pruning: bool = False                  # Differential Frame Pruner (stages 3 and 4)
    image_merge_size: int = 1
    video_merge_size: int = 2
    fps: float = 1.0
    max_frames: int = 180
    seed: int = 0                          # packing / sample order
    num_workers: int = 2                   # DataLoader worker processes (decoding, resizing, DiffFP masks)


@dataclass
class TrainConfig:
    stage: str | None = None
    lr: dict[str, float | None] = field(default_factory=lambda: {"vision": 2e-6, "projector": 1e-5, "llm": 1e-5})
    epochs: int = 1
    max_steps: int | None = None           # stop after this many optimizer steps (default: the epochs' steps)
    gradient_accumulation_steps: int = 1   # packed micro-batches per rank per optimizer step
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    seed: int = 42


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 64
    alpha: int = 16
    dropout: float = 0.0
    llm: bool = True                       # LoRA on the LLM's linear layers
    vision: bool = False                   # LoRA on the vision encoder's linear layers too
    llm_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"])
    vision_targets: list[str] = field(default_factory=lambda: ["qkv", "out_proj", "fc1", "fc2"])


@dataclass
class DeepSpeedSection:
    enabled: bool = True                   # false: plain torch (one process, no ZeRO)
    config: str | None = None              # a training/ds/*.json file (batch sizes and precision may be "auto")


@dataclass
class RunConfig:
    out: str = "runs/default"
    log_every: int = 1
    save_every: int = 500                  # optimizer steps between checkpoints (0: only at the end)
    keep_last: int = 2                     # complete checkpoints kept (0: all)
    save_at_end: bool = True
    tensorboard: bool = True               # when the tensorboard package is installed
    progress: bool = True
    threads: int | None = None             # torch.set_num_threads (exact resume on CPU: fix it)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    run: RunConfig = field(default_factory=RunConfig)
    sources: list[str] = field(default_factory=list)  # the files read, in inheritance order (not a YAML key)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("sources")
        return d


# Keys whose values are paths, made absolute when read.  The DeepSpeed JSON is part of the recipe, so it is
# relative to the config file that names it; checkpoints, data and run folders are relative to the working
# directory (where the run is launched), as in the official scripts.
FILE_RELATIVE_KEYS = {("deepspeed", "config")}
PATH_KEYS = {("model", "init"), ("model", "processor"), ("data", "data_folder"), ("run", "out")} | FILE_RELATIVE_KEYS
PATH_LIST_KEYS = {("data", "annotations")}


# ---- loading ---------------------------------------------------------------------------------------------------
def read_mapping(path: str, *, missing: str | None = None) -> dict:
    """A YAML file (or, by its .json suffix, a JSON file) holding a mapping; errors name the file."""
    import json

    import yaml

    is_json = path.endswith(".json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f) if is_json else yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(missing or f"config file {path!r} does not exist") from None
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _absolutize(tree: dict, config_dir: str) -> None:
    """Relative paths become absolute (FILE_RELATIVE_KEYS against the config file's folder, the others
    against the working directory)."""
    for section, key in PATH_KEYS | PATH_LIST_KEYS:
        sub = tree.get(section)
        if not isinstance(sub, dict) or sub.get(key) is None:
            continue
        base = config_dir if (section, key) in FILE_RELATIVE_KEYS else os.getcwd()
        value = sub[key]
        if (section, key) in PATH_LIST_KEYS:
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list):
                sub[key] = [_join(base, v) for v in value]
        elif isinstance(value, str):
            sub[key] = _join(base, value)


def _join(base: str, value):
    if not isinstance(value, str) or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _merge(into: dict, update: dict, origins: dict, origin: str, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origins, origin, name + ".")
        else:
            into[key] = value
            origins[name] = origin
            if isinstance(value, dict):
                for sub in value:
                    origins[f"{name}.{sub}"] = origin


def _load_tree(path: str, origins: dict, seen: tuple = ()) -> tuple[dict, list[str]]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: inheritance cycle: {' -> '.join(seen + (path,))}")
    raw = read_mapping(path)
    parents = raw.pop("inherit", None)
    if parents is None:
        parents = []
    elif isinstance(parents, str):
        parents = [parents]
    elif not (isinstance(parents, list) and all(isinstance(p, str) for p in parents)):
        raise ConfigError(f"{path}: 'inherit' must be a file name or a list of them, got {parents!r}")
    base = os.path.dirname(path)
    tree: dict = {}
    sources: list[str] = []
    for parent in parents:
        parent_tree, parent_sources = _load_tree(_join(base, parent), origins, seen + (path,))
        _merge(tree, parent_tree, {}, path)
        sources += [s for s in parent_sources if s not in sources]
    _absolutize(raw, base)
    _merge(tree, raw, origins, path)
    sources.append(path)
    return tree, sources


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value); the value is read as YAML (``null``, ``3``, ``[a, b]``, ``1.0e-5``)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.max_steps=10")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted key such as train.lr.vision")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {err}") from None
    return parts, parsed


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The configuration of ``path`` after inheritance and ``overrides`` (``a.b=c`` strings), type-checked."""
    origins: dict[str, str] = {}
    tree, sources = _load_tree(path, origins)
    for text in overrides:
        parts, value = parse_override(text)
        if tuple(parts) in PATH_KEYS:
            value = _join(os.getcwd(), value)
        elif tuple(parts) in PATH_LIST_KEYS and isinstance(value, (str, list)):
            value = [_join(os.getcwd(), v) for v in ([value] if isinstance(value, str) else value)]
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
        origins[".".join(parts)] = f"--set {text}"
    cfg = _build(Config, tree, origins, "", sources[-1])
    cfg.sources = sources
    return cfg


# ---- schema checks ---------------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def _check(value, tp, key: str, where: str):
    """value converted to tp, or a ConfigError naming the key and its file."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check(value, option, key, where)
            except ConfigError as err:
                errors.append(err)
        raise _type_error(key, where, value, tp)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(key, where, value, tp)
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _type_error(key, where, value, tp)
        return [_check(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _type_error(key, where, value, tp)
        return {str(k): _check(v, item, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, where, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, where, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, where, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, where, value, tp)
    raise TypeError(f"unsupported schema type {tp!r} for {key}")


def _type_error(key: str, where: str, value, tp) -> ConfigError:
    return ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls, tree: dict, origins: dict, prefix: str, default_where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "sources"}
    if not isinstance(tree, dict):
        raise ConfigError(f"{origins.get(prefix.rstrip('.'), default_where)}: {prefix.rstrip('.')} must be a "
                          f"mapping, got {tree!r}")
    for key in tree:
        if key not in fields:
            name = prefix + str(key)
            where = origins.get(name) or next((v for k, v in origins.items() if k.startswith(name + ".")),
                                              default_where)
            raise ConfigError(f"{where}: unknown key {name!r}; allowed under "
                              f"{prefix.rstrip('.') or 'the top level'}: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in tree:
            continue
        key = prefix + name
        where = origins.get(key, default_where)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, tree[name], origins, key + ".", default_where)
        else:
            kwargs[name] = _check(tree[name], tp, key, where)
    cfg = cls(**kwargs)
    if cls is TrainConfig:
        unknown = sorted(set(cfg.lr) - set(MODULE_GROUPS))
        if unknown:
            where = origins.get(f"{prefix}lr.{unknown[0]}", origins.get(prefix + "lr", default_where))
            raise ConfigError(f"{where}: unknown module(s) {unknown} in "
                              f"train.lr; the modules are {list(MODULE_GROUPS)}")
        missing = [m for m in MODULE_GROUPS if m not in cfg.lr]
        if missing:
            raise ConfigError(f"{origins.get(prefix + 'lr', default_where)}: train.lr must give every module a "
                              f"learning rate (null = frozen); missing: {missing}")
    return cfg


def origin_of(cfg: Config) -> str:
    """The file a run's configuration came from (for error messages)."""
    return cfg.sources[-1] if cfg.sources else "<config>"


def write_resolved(cfg: Config, path: str) -> None:
    """The full configuration after inheritance and overrides, as YAML (loadable with load_config)."""
    import yaml

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = "# resolved from: " + " <- ".join(cfg.sources) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
