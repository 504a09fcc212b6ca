"""`vl3fast ckpt export RUN_OR_CKPT OUT`: a training checkpoint -> a checkpoint folder that transformers'
VideoLlama3ForConditionalGeneration, vl3fast's VideoLLaMA3ForCausalLM and `vl3fast chat` load.

From any engine: plain torch (``torch_state.pt``), DeepSpeed ZeRO-0 (the module states file) and ZeRO 1/2/3
(partitions consolidated to fp32 with DeepSpeed's ``zero_to_fp32``; it walks ``named_parameters``, so the
vision attention comes out as the fused ``qkv``).  The consolidated tensors are loaded into the model by
their parameter names and written through the model's own ``state_dict``, which splits ``qkv`` into
``q_proj`` / ``k_proj`` / ``v_proj``: the one place the split is made.  LoRA runs either keep their
adapters beside the base weights (``OUT/adapter/``, peft's files) or, with ``merge_lora``, have them folded
into plain weights.  The run's tokenizer and processor files are copied into OUT.
"""
from __future__ import annotations

import glob
import json
import os

import torch

from ..models.videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM
from ..models.videollama3 import checkpoint as ckpt_files
from . import checkpoint
from .config import LoraConfig
from .engine import DS_TAG, TORCH_STATE_FILE
from .model_init import copy_processor_files
from .modules import apply_lora, unload_lora

ADAPTER_DIR = "adapter"
_WRAPPER_PREFIX = "model."  # trainer.TrainingStep holds the model as `.model`


def resolve_checkpoint(path: str) -> str:
    """A complete checkpoint folder from a checkpoint or a run folder (its newest checkpoint)."""
    if checkpoint.is_complete(path):
        return path
    if os.path.isdir(path):
        latest = checkpoint.latest_checkpoint(path)
        if latest:
            return latest
        raise FileNotFoundError(f"{path!r} is neither a complete checkpoint ({checkpoint.CHECKPOINTS}/step-NNNNNNNN "
                                f"with {checkpoint.META}) nor a run folder with one")
    raise FileNotFoundError(f"{path!r} does not exist")


def consolidated_state_dict(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """Full tensors of every parameter (and persistent buffer), by model parameter name."""
    meta = checkpoint.read_meta(ckpt_dir)
    if meta["engine"] == "torch":
        state = torch.load(os.path.join(ckpt_dir, TORCH_STATE_FILE), map_location="cpu", weights_only=False)["model"]
    elif meta["zero_stage"] == 0:
        (path,) = glob.glob(os.path.join(ckpt_dir, DS_TAG, "mp_rank_*_model_states.pt"))
        state = torch.load(path, map_location="cpu", weights_only=False)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=DS_TAG)
    out = {}
    for name, tensor in state.items():
        if not name.startswith(_WRAPPER_PREFIX):
            raise ValueError(f"{ckpt_dir}: unexpected parameter name {name!r} (not a vl3fast training checkpoint?)")
        out[name[len(_WRAPPER_PREFIX):]] = tensor
    return out


def _load_model(ckpt_dir: str, dtype: torch.dtype | None):
    meta = checkpoint.read_meta(ckpt_dir)
    config = VideoLLaMA3Config.from_dict(meta["model_config"])
    with torch.device("meta"):
        model = VideoLLaMA3ForCausalLM(config)
    lora = LoraConfig(**meta["lora"])
    if lora.enabled:
        model = apply_lora(model, lora, {"vision": 1.0, "projector": 1.0, "llm": 1.0})
    state = consolidated_state_dict(ckpt_dir)
    expected = dict(model.named_parameters())
    if config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)
        expected.pop("language_model.lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{ckpt_dir}: the checkpoint does not match its model config: missing {missing}, "
                         f"unexpected {unexpected}")
    train_dtype = getattr(torch, meta["dtype"])
    model = model.to_empty(device="cpu").to(dtype or train_dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])
    if config.tie_word_embeddings:
        model.language_model.tie_weights()
    from ..models.videollama3.model import _reset_buffers

    _reset_buffers(model, torch.device("cpu"))
    return model.eval(), lora, meta


def export(src: str, out: str, *, fmt: str = "native", merge_lora_adapters: bool = False,
           dtype: torch.dtype | None = None) -> str:
    """Writes the export of checkpoint (or run) ``src`` into ``out``; returns the checkpoint folder used."""
    if fmt not in ("native", "official"):
        raise ValueError(f"--format must be native or official, got {fmt!r}")
    ckpt_dir = resolve_checkpoint(src)
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"export folder {out!r} exists and is not empty; choose a new folder")
    model, lora, meta = _load_model(ckpt_dir, dtype)
    if merge_lora_adapters and not lora.enabled:
        raise ValueError(f"--merge-lora: checkpoint {ckpt_dir!r} was trained without LoRA")
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))
    processor = os.path.join(run_dir, checkpoint.PROCESSOR)
    with ckpt_files.atomic_directory(out) as tmp:  # a killed export leaves no half-written OUT
        if lora.enabled and not merge_lora_adapters:
            _save_adapter(model, lora, os.path.join(tmp, ADAPTER_DIR))
        if lora.enabled:
            unload_lora(model, merge=merge_lora_adapters)
        model.save_pretrained(tmp, fmt=fmt)
        if os.path.isdir(processor):
            copy_processor_files(processor, tmp)
        with open(os.path.join(tmp, "vl3fast_export.json"), "w") as f:
            json.dump({"checkpoint": os.path.abspath(ckpt_dir), "step": meta["step"], "format": fmt,
                       "lora": "merged" if lora.enabled and merge_lora_adapters else
                       (ADAPTER_DIR if lora.enabled else None)}, f, indent=2)
    return ckpt_dir


def _save_adapter(model, lora: LoraConfig, directory: str) -> None:
    """peft's adapter files (module names are vl3fast's: apply them with vl3fast.training.modules)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .modules import peft_lora_config

    os.makedirs(directory, exist_ok=True)
    state = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, os.path.join(directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_lora_config(lora, {"vision": 1.0, "projector": 1.0, "llm": 1.0}).save_pretrained(directory)

