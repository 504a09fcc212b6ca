"""VideoLLaMA3 as a vLLM model: vl3fast's vision encoder and projector, vLLM's own Qwen2 as the LLM.

The module tree mirrors `vl3fast.VideoLLaMA3ForCausalLM` (`vision`, `projector`, `language_model`), so
checkpoint keys of both formats map through vl3fast's one adapter
(`models.videollama3.state_dict_adapter.checkpoint_to_vl3fast_key`): that is the weights mapper.
Vision runs on vl3fast's ops: the fused 2D-RoPE varlen attention over the packed frames of every item in the
batch, the m x m downsample, and DiffFP pruning with the processor's keep mask, the pruned rows dropped with
one `index_select` over the merged tokens (after the encoder, as transformers does: `PRUNING`).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from ... import ops
from ...models.videollama3 import state_dict_adapter as adapter
from ...models.videollama3.projector import Projector
from ...models.videollama3.vision import DEFAULT_BACKEND, VisionEncoder
from .config import text_config, vl3_config
from .processing import VideoLLaMA3DummyInputsBuilder, VideoLLaMA3MultiModalProcessor, VideoLLaMA3ProcessingInfo

PRUNING = "after"  # VisionEncoder's prune placement: "after" matches transformers; "before" skips pruned patches
_PIXEL_KEYS = {"pixel_values": "image", "pixel_values_videos": "video"}


@MULTIMODAL_REGISTRY.register_processor(VideoLLaMA3MultiModalProcessor, info=VideoLLaMA3ProcessingInfo,
                                        dummy_inputs=VideoLLaMA3DummyInputsBuilder)
class VideoLLaMA3ForVLLM(nn.Module, SupportsMultiModal):
    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # the tokens transformers' VideoLlama3Processor uses (vl3fast's defaults); the processor expands them
        if modality.startswith("image"):
            return "<|image_pad|>"
        if modality.startswith("video"):
            return "<|video_pad|>"
        raise ValueError(f"VideoLLaMA3 takes images and videos, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        hf_config = vllm_config.model_config.hf_config
        self.vl3_config = vl3_config(hf_config)
        with self._mark_tower_model(vllm_config, {"image", "video"}):
            self.vision = VisionEncoder(self.vl3_config.vision)
            self.projector = Projector(self.vl3_config.vision.hidden_size, self.vl3_config.text.hidden_size)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=text_config(hf_config),
                prefix=maybe_prefix(prefix, "language_model"), architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ---- vision ------------------------------------------------------------------------------------------------
    def _features(self, kind: str, kwargs: dict) -> tuple[torch.Tensor, ...]:
        """Projected features of every item of one modality, one tensor [kept tokens, E] per item."""
        prefix = "image" if kind == "image" else "video"
        pixels = kwargs["pixel_values" if kind == "image" else "pixel_values_videos"]
        grid = kwargs[f"{prefix}_grid_thw"].reshape(-1, 3)
        merge = kwargs[f"{prefix}_merge_sizes"].reshape(-1)
        keep = kwargs.get("video_compression_mask") if kind == "video" else None
        keep = None if keep is None else keep.reshape(-1)
        grid = ops.PackedGrid.from_grid(grid, merge, keep=keep)  # the host sync (the fields stay on the CPU)
        dtype = self.projector.readout[0].weight.dtype
        x_MC = self.vision(pixels.to(dtype), backend=DEFAULT_BACKEND, keep_M=keep, prune=PRUNING, grid=grid)
        return self.projector(x_MC).split(list(grid.tokens_per_item if keep is None else grid.kept_per_item))

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Item embeddings in the order of their modalities' keys (vLLM groups items by modality)."""
        out: tuple[torch.Tensor, ...] = ()
        for key in list(kwargs):
            if key in _PIXEL_KEYS and kwargs[key] is not None:
                out += self._features(_PIXEL_KEYS[key], kwargs)
        return out

    # ---- LLM ---------------------------------------------------------------------------------------------------
    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs: object):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids=input_ids, positions=positions,
                                         intermediate_tensors=intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    # ---- weights -----------------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint tensors of either format: LLM ones stream into vLLM's Qwen2 loader, vision and projector
        ones load through vl3fast's modules (patch kernel reshape, fused q/k/v)."""
        fmt = self.vl3_config.source_format
        towers: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "projector": {}}
        unexpected: list[str] = []

        def llm_weights():
            for key, tensor in weights:
                name = adapter.checkpoint_to_vl3fast_key(key, fmt)
                if name is None:
                    unexpected.append(key)
                elif name.startswith("language_model."):
                    yield name[len("language_model."):], tensor
                else:
                    module, rest = name.split(".", 1)
                    towers[module][rest] = adapter.from_checkpoint(name, tensor)

        loaded = {"language_model." + n for n in self.language_model.load_weights(llm_weights())}
        if unexpected:
            raise ValueError(f"checkpoint keys with no place in VideoLLaMA3 ({fmt} format): {sorted(unexpected)[:20]}")
        for module_name, state in towers.items():
            module = getattr(self, module_name)
            with torch.no_grad():
                module.load_state_dict(state, strict=True)
            loaded |= {f"{module_name}.{n}" for n, _ in module.named_parameters()}
        return loaded
