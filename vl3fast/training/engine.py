"""The optimizer side of a run: AdamW + cosine schedule with warm-up, on DeepSpeed (ZeRO 0-3) or plain torch.

Both engines take the same parameter groups (modules.freeze_and_group), the same optimizer, schedule and
clipping, so a DeepSpeed run and a plain torch run of the same data give the same losses (tested).
The loss handed to ``backward`` is ``loss.normalised_loss`` of the micro-batch's summed cross-entropy with the
engine's ``loss_normalisation``: DeepSpeed averages gradients over ranks and scales by
1/gradient_accumulation_steps, which the factor undoes; plain torch needs neither.
"""
from __future__ import annotations

import hashlib
import math
import os

import torch

from .config import Config, ConfigError, origin_of, read_mapping

TORCH_STATE_FILE = "torch_state.pt"
DS_TAG = "ds"  # DeepSpeed's tag (sub-folder) inside a checkpoint folder


# ---- schedule --------------------------------------------------------------------------------------------------
def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_multiplier(step: int, total_steps: int, warmup_ratio: float) -> float:
    """The factor on every group's learning rate for optimizer update ``step`` (0-based): linear warm-up over
    the first ``ceil(ratio * total)`` updates, reaching 1 at the last of them (so no update has lr 0), then
    cosine decay over the remaining ones, towards 0 after the last update."""
    w = warmup_steps(total_steps, warmup_ratio)
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, total_steps - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(groups: list[dict], cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    # foreach=False: the per-tensor loop is the same on both engines (ZeRO hands AdamW flat partitions)
    return torch.optim.AdamW(groups, betas=tuple(t.adam_betas), eps=t.adam_eps, weight_decay=t.weight_decay,
                             foreach=False)


def make_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total_steps, warmup_ratio))


# ---- DeepSpeed configuration -----------------------------------------------------------------------------------
def resolve_ds_config(cfg: Config, world_size: int, dtype: torch.dtype) -> dict:
    """The DeepSpeed JSON of the run with every ``"auto"`` filled from the training config.  A value that is
    set and disagrees with the training config (batch sizes, precision, clipping) is an error naming both."""
    path = cfg.deepspeed.config
    if not path:
        raise ConfigError(f"{origin_of(cfg)}: deepspeed.enabled is true but deepspeed.config names no file "
                          "(e.g. training/ds/zero1.json)")
    ds = read_mapping(path, missing=f"{origin_of(cfg)}: deepspeed.config {path!r} does not exist")
    gas = cfg.train.gradient_accumulation_steps
    wanted = {
        # one packed micro-batch (a token budget, not a sample count) per rank per micro-step
        "train_micro_batch_size_per_gpu": (1, "one packed micro-batch per rank (data.max_tokens sets its size)"),
        "gradient_accumulation_steps": (gas, "train.gradient_accumulation_steps"),
        "train_batch_size": (gas * world_size, f"train.gradient_accumulation_steps x {world_size} ranks"),
        "gradient_clipping": (cfg.train.max_grad_norm, "train.max_grad_norm"),
    }
    for key, (value, source) in wanted.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(f"{path}: {key} is {given!r} but the training config ({origin_of(cfg)}) gives "
                              f"{value!r} ({source}); set it to \"auto\" or make them agree")
        ds[key] = value
    for section, want in (("bf16", dtype == torch.bfloat16), ("fp16", False)):
        sub = ds.get(section) or {}
        given = sub.get("enabled", "auto")
        if given != "auto" and bool(given) != want:
            precision = str(dtype).removeprefix("torch.")
            raise ConfigError(f"{path}: {section}.enabled is {given!r} but the run trains in {precision} "
                              f"(model.dtype {cfg.model.dtype!r} in {origin_of(cfg)}); set it to \"auto\"")
        ds[section] = {**sub, "enabled": want}
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{path}: remove {key!r}: the optimizer and schedule come from the training config "
                              "(train.lr per module, AdamW, cosine with warm-up)")
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    ds.setdefault("steps_per_print", 2**31 - 1)  # vl3fast logs; DeepSpeed's own step prints are noise
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def zero_stage(ds_config: dict | None) -> int:
    return int((ds_config or {}).get("zero_optimization", {}).get("stage", 0)) if ds_config is not None else -1


# ---- engines ---------------------------------------------------------------------------------------------------
class TorchEngine:
    """One process, no DeepSpeed: torch AdamW, clip_grad_norm_, LambdaLR."""

    name = "torch"

    def __init__(self, model, groups, cfg: Config, total_steps: int):
        self.module = model
        self.optimizer = make_optimizer(groups, cfg)
        self.scheduler = make_scheduler(self.optimizer, total_steps, cfg.train.warmup_ratio)
        self.max_grad_norm = cfg.train.max_grad_norm
        self.params = [p for g in groups for p in g["params"]]
        self.grad_norm = None

    @property
    def loss_normalisation(self) -> dict:
        return {"world_size": 1, "grad_accum": 1}

    def forward(self, batch):
        return self.module(batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def micro_step_done(self) -> None:
        pass

    def step(self) -> None:
        if self.max_grad_norm > 0:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lrs(self) -> dict[str, float]:
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def save(self, directory: str, client_state: dict) -> None:
        torch.save({"model": self.module.state_dict(keep_vars=False), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "client_state": client_state},
                   os.path.join(directory, TORCH_STATE_FILE))

    def load(self, directory: str) -> dict:
        state = torch.load(os.path.join(directory, TORCH_STATE_FILE), map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["client_state"]

    def base_optimizer(self):
        return self.optimizer


class DeepSpeedEngine:
    """deepspeed.initialize with our optimizer and schedule (client callables) and the resolved JSON."""

    name = "deepspeed"

    def __init__(self, model, groups, cfg: Config, total_steps: int, ds_config: dict):
        import deepspeed

        self.ds_config = ds_config
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, config=ds_config,
            optimizer=lambda params: make_optimizer(params, cfg),
            lr_scheduler=lambda opt: make_scheduler(opt, total_steps, cfg.train.warmup_ratio))
        self.module = self.engine.module
        self.params = [p for g in groups for p in g["params"]]
        self.grad_norm = None
        self._boundary_norm = None

    @property
    def zero_stage(self) -> int:
        return self.engine.zero_optimization_stage()

    @property
    def loss_normalisation(self) -> dict:
        return {"world_size": self.engine.dp_world_size, "grad_accum": self.engine.gradient_accumulation_steps()}

    def forward(self, batch):
        return self.engine(batch)  # DeepSpeed's forward prologue (ZeRO-3 hooks, autocast) runs

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def micro_step_done(self) -> None:
        # DeepSpeed counts micro-steps itself and updates on the accumulation boundary only.  Without ZeRO it
        # clips but does not keep the norm, so it is measured here (the gradients are all-reduced by now).
        if self.zero_stage == 0 and self.engine.is_gradient_accumulation_boundary():
            self._boundary_norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.params
                                                                        if p.grad is not None]))
        self.engine.step()

    def step(self) -> None:
        norm = self.engine.get_global_grad_norm()
        self.grad_norm = self._boundary_norm if norm is None else float(norm)

    def lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.engine.optimizer.param_groups)}

    def save(self, directory: str, client_state: dict) -> None:
        self.engine.save_checkpoint(directory, tag=DS_TAG, client_state=client_state, save_latest=False)

    def load(self, directory: str) -> dict:
        path, client_state = self.engine.load_checkpoint(directory, tag=DS_TAG, load_optimizer_states=True,
                                                         load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint {DS_TAG!r} in {directory!r}")
        return client_state

    def base_optimizer(self):
        return self.engine.basic_optimizer


def build_engine(model, groups, cfg: Config, total_steps: int, ds_config: dict | None):
    if ds_config is None:
        return TorchEngine(model, groups, cfg, total_steps)
    return DeepSpeedEngine(model, groups, cfg, total_steps, ds_config)


# ---- checksums (exact-resume checks) ---------------------------------------------------------------------------
def _hash_tensor(h, t: torch.Tensor) -> None:
    h.update(t.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())


def parameter_checksum(model) -> str:
    """sha256 of every parameter (sorted by name), gathered from ZeRO-3 partitions when needed.  All ranks
    must call it (the gather is a collective); the result is the same on every rank."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(name.encode())
        if hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                _hash_tensor(h, p.data)
        else:
            _hash_tensor(h, p.data)
    return h.hexdigest()


def optimizer_checksum(optimizer) -> str:
    """sha256 of this rank's optimizer state tensors (ZeRO: the rank's partitions), in a fixed order."""
    h = hashlib.sha256()
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            for key, value in sorted(optimizer.state.get(p, {}).items()):
                h.update(f"{gi}.{pi}.{key}".encode())
                if torch.is_tensor(value):
                    _hash_tensor(h, value)
                else:
                    h.update(repr(value).encode())
    return h.hexdigest()
