"""VideoLLaMA3ForCausalLM: vision encoder + projector + transformers' Qwen2ForCausalLM (spec A, B, E).

Inputs are the dict transformers' VideoLLaMA3 processor produces.  Visual features replace the placeholder
embeddings (image features at ``image_token_id``, video features at ``video_token_id``, each in item order),
and the LLM runs on the result.  Generation is transformers' GenerationMixin on the LLM, fed the merged
embeddings, so left padding, caches and decoding strategies behave exactly as in transformers.

Shape suffixes: B batch, L text length, E LLM hidden size, M merged visual tokens.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn as nn

from ... import ops
from . import checkpoint
from . import state_dict_adapter as adapter
from .config import VideoLLaMA3Config
from .projector import Projector
from .vision import DEFAULT_BACKEND, DEFAULT_PRUNING, VisionEncoder, check_backend, check_pruning

VISUAL_KEYS = ("pixel_values", "image_grid_thw", "image_merge_sizes", "pixel_values_videos", "video_grid_thw",
               "video_merge_sizes", "video_compression_mask")


def video_keep_mask(pixel_values_videos, video_grid_thw, video_merge_sizes) -> torch.Tensor:
    """DiffFP keep mask ``[M]`` (spec C) with the default threshold (the fused op, bit-exact with transformers)."""
    return ops.frame_keep_mask(pixel_values_videos, video_grid_thw, video_merge_sizes)


class VideoLLaMA3ForCausalLM(nn.Module):
    def __init__(self, config: VideoLLaMA3Config, *, attn_backend: str | None = None,
                 pruning: str = DEFAULT_PRUNING):
        super().__init__()
        from transformers import Qwen2ForCausalLM

        self.config = config
        self.attn_backend = attn_backend
        self.pruning = pruning
        self.vision = VisionEncoder(config.vision)
        self.projector = Projector(config.vision.hidden_size, config.text.hidden_size)
        self.language_model = Qwen2ForCausalLM(config.text.to_qwen2_config(config.tie_word_embeddings))

    # ---- settings ------------------------------------------------------------------------------------------------
    @property
    def attn_backend(self) -> str:
        return self._attn_backend or DEFAULT_BACKEND

    @attn_backend.setter
    def attn_backend(self, value: str | None) -> None:
        self._attn_backend = None if value is None else check_backend(value)

    @property
    def pruning(self) -> str:
        return self._pruning

    @pruning.setter
    def pruning(self, value: str) -> None:
        self._pruning = check_pruning(value)

    @property
    def device(self) -> torch.device:
        return self.projector.readout[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.readout[0].weight.dtype

    # ---- vision ----------------------------------------------------------------------------------------------------
    def get_visual_features(self, pixel_values, grid_thw, merge_sizes, keep_mask=None) -> torch.Tensor:
        """Projected features ``[M, E]`` of every merged token, in item order; with ``keep_mask`` only the
        kept ones, pruned after the encoder or before it (``self.pruning``, vision.PRUNING_PLACEMENTS)."""
        x_MC = self.vision(pixel_values, grid_thw, merge_sizes, backend=self.attn_backend, keep_M=keep_mask,
                           prune=self.pruning)  # one host sync in all cases
        return self.projector(x_MC)

    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, image_merge_sizes=None,
              pixel_values_videos=None, video_grid_thw=None, video_merge_sizes=None,
              video_compression_mask=None) -> torch.Tensor:
        """Text embeddings ``[B, L, E]`` with visual features written at the placeholder tokens."""
        embeds_BLE = self.language_model.get_input_embeddings()(input_ids)
        for name, token_id, pixels, grid, merge, mask in (
            ("image", self.config.image_token_id, pixel_values, image_grid_thw, image_merge_sizes, None),
            ("video", self.config.video_token_id, pixel_values_videos, video_grid_thw, video_merge_sizes,
             video_compression_mask),
        ):
            slots_BL = input_ids == token_id
            if pixels is None:
                if slots_BL.any():
                    raise ValueError(f"the prompt has {int(slots_BL.sum())} {name} placeholder tokens (id "
                                     f"{token_id}) but no {name} pixel values were given")
                continue
            if grid is None or merge is None:
                raise ValueError(f"{name} pixel values need {name}_grid_thw and {name}_merge_sizes")
            feats_ME = self.get_visual_features(pixels, grid, merge, mask).to(embeds_BLE.dtype)
            count = int(slots_BL.sum())
            if count != feats_ME.shape[0]:
                raise ValueError(f"{name} placeholder count does not match the visual tokens: the prompt has "
                                 f"{count} tokens with id {token_id}, the {name}s give {feats_ME.shape[0]} features")
            embeds_BLE = embeds_BLE.masked_scatter(slots_BL[..., None], feats_ME)
        return embeds_BLE

    def official_placeholders(self, input_ids, attention_mask, visual: dict):
        """Prompts built the official way: one ``<image>`` id (config ``image_token_index``, 151665) for images
        and video frames alike.  Those ids become ``image_token_id`` (images given) or ``video_token_id`` (videos
        given).  With ``use_token_compression`` (official model-side pruning) and one placeholder per merged
        token (the official processor inserts all of them), the placeholders whose DiffFP mask is False are
        dropped from ``input_ids`` and ``attention_mask`` (rows re-left-padded, batches allowed) and the mask
        is passed on as ``video_compression_mask``.  Returns (input_ids, attention_mask, visual); prompts
        without the official id come back unchanged."""
        official = self.config.legacy_image_token_index
        if official is None or official in (self.config.image_token_id, self.config.video_token_id):
            return input_ids, attention_mask, visual
        slots_BL = input_ids == official
        count = int(slots_BL.sum())
        if count == 0:
            return input_ids, attention_mask, visual
        has_images, has_videos = visual.get("pixel_values") is not None, visual.get("pixel_values_videos") is not None
        if has_images == has_videos:
            raise ValueError(
                f"the prompt uses the official <image> placeholder (id {official}) for {count} tokens, which stands for "
                + ("images and video frames alike, so with both given their order is ambiguous: use image_token_id "
                   f"{self.config.image_token_id} / video_token_id {self.config.video_token_id}" if has_images
                   else "visual tokens, but no pixel_values or pixel_values_videos were given"))
        native = self.config.image_token_id if has_images else self.config.video_token_id
        if has_images or not self.config.use_token_compression:
            return input_ids.masked_fill(slots_BL, native), attention_mask, visual
        keep_M = visual.get("video_compression_mask")
        if keep_M is None:
            keep_M = video_keep_mask(visual["pixel_values_videos"], visual["video_grid_thw"],
                                     visual["video_merge_sizes"])
        keep_M = keep_M.reshape(-1).to(device=input_ids.device, dtype=torch.bool)
        visual = {**visual, "video_compression_mask": keep_M}
        if count != keep_M.numel():  # already pruned by the processor, or a mismatch that embed() reports
            return input_ids.masked_fill(slots_BL, native), attention_mask, visual
        keep_BL = torch.ones_like(slots_BL).masked_scatter(slots_BL, keep_M)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows = [(ids[k], mask[k]) for ids, mask, k in zip(input_ids.masked_fill(slots_BL, native), attention_mask,
                                                          keep_BL)]
        length = max(len(ids) for ids, _ in rows)
        pad = self.language_model.generation_config.pad_token_id
        new_ids = input_ids.new_full((len(rows), length), pad if isinstance(pad, int) else 0)
        new_mask = attention_mask.new_zeros((len(rows), length))
        for i, (ids, mask) in enumerate(rows):
            new_ids[i, length - len(ids):], new_mask[i, length - len(ids):] = ids, mask
        return new_ids, new_mask, visual

    # ---- training ------------------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward: every vision encoder layer and every LLM decoder layer."""
        self.vision.gradient_checkpointing = True
        llm = self.language_model
        if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x name
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def gradient_checkpointing_disable(self) -> None:
        self.vision.gradient_checkpointing = False
        llm = self.language_model
        (getattr(llm, "activation_checkpointing_disable", None) or llm.gradient_checkpointing_disable)()

    def forward_packed(self, batch, *, reduction: str = "sum") -> tuple[torch.Tensor, int]:
        """The training forward on a `vl3fast.training.PackedBatch`: ``(loss_sum, num_supervised)``, the fp32
        sum of the cross-entropy over the batch's supervised tokens and their count (a host int).

        - One vision-encoder call covers every image and frame of the batch (pruned per the batch's keep
          mask, placement ``self.pruning``); a batch without media encodes the collator's dummy item and adds
          its features x0, so every rank runs the same modules (ZeRO-3 lockstep).
        - Samples never see each other: on CPU transformers builds a block-causal mask from the restarting
          ``position_ids`` (attention_mask None, no cache); with a flash-attention LLM the batch's int32
          ``cu_seqlens`` go to varlen attention.
        - ``lm_head`` runs only on the rows whose next token is a target (``batch.loss_rows``).
        Host sizes come from ``batch.meta``: no host sync here.  reduction="none" gives the per-target losses
        ``[n]`` (in ``batch.loss_rows`` order) instead of their sum.
        """
        if reduction not in ("sum", "none"):
            raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
        meta = batch.meta
        embeds_1TE = self.language_model.get_input_embeddings()(batch.input_ids)
        keep = batch.keep_mask if not batch.dummy else None
        grid = ops.PackedGrid.from_items(meta.grid_thw, meta.merge_sizes,
                                         keep=meta.keep_list if keep is not None else None)  # host sizes: no sync
        x_MC = self.vision(batch.pixel_values.to(self.dtype), backend=self.attn_backend, keep_M=keep,
                           prune=self.pruning, grid=grid)
        feats_ME = self.projector(x_MC).to(embeds_1TE.dtype)
        if batch.dummy:
            embeds_1TE = embeds_1TE + feats_ME.sum() * 0.0  # the dummy's gradient path, worth nothing
        else:
            if feats_ME.shape[0] != batch.visual_rows.numel():
                raise ValueError(f"the batch has {batch.visual_rows.numel()} visual placeholders but its media give "
                                 f"{feats_ME.shape[0]} features (samples {list(meta.sample_ids)})")
            embeds_1TE = embeds_1TE.index_copy(1, batch.visual_rows, feats_ME[None])
        llm_kwargs = {}
        if "flash" in str(getattr(self.language_model.config, "_attn_implementation", "")):
            llm_kwargs = dict(cu_seq_lens_q=batch.cu_seqlens, cu_seq_lens_k=batch.cu_seqlens,
                              max_length_q=meta.max_seqlen, max_length_k=meta.max_seqlen)
        hidden_1TE = self.language_model.model(inputs_embeds=embeds_1TE, position_ids=batch.position_ids,
                                               attention_mask=None, use_cache=False, **llm_kwargs).last_hidden_state
        rows_nE = hidden_1TE[0].index_select(0, batch.loss_rows)
        logits_nV = self.language_model.lm_head(rows_nE).float()
        loss = torch.nn.functional.cross_entropy(logits_nV, batch.loss_targets, reduction=reduction)
        return loss, meta.num_supervised

    # ---- LLM -----------------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, *, packed=None, **kwargs):
        """transformers' CausalLMOutputWithPast of the LLM (``logits [B, L, V]``); extra keyword arguments
        other than the processor's visual keys go to Qwen2ForCausalLM (labels, position_ids, ...).
        ``packed=PackedBatch`` runs the training forward instead (`forward_packed`), so a wrapping engine
        (DeepSpeed) drives it through its own ``forward``."""
        if packed is not None:
            return self.forward_packed(packed)
        visual = {k: kwargs.pop(k) for k in VISUAL_KEYS if k in kwargs}
        input_ids, attention_mask, visual = self.official_placeholders(input_ids, attention_mask, visual)
        embeds_BLE = self.embed(input_ids, **visual)
        return self.language_model(inputs_embeds=embeds_BLE, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """Token ids ``[B, L + new]`` (prompt included, as transformers returns them), via GenerationMixin."""
        visual = {k: kwargs.pop(k) for k in VISUAL_KEYS if k in kwargs}
        input_ids, attention_mask, visual = self.official_placeholders(input_ids, attention_mask, visual)
        embeds_BLE = self.embed(input_ids, **visual)
        return self.language_model.generate(input_ids=input_ids, inputs_embeds=embeds_BLE,
                                            attention_mask=attention_mask, **kwargs)

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo_id, *, dtype: torch.dtype | str | None = None, device=None,
                        attn_backend: str | None = None, pruning: str = DEFAULT_PRUNING) -> "VideoLLaMA3ForCausalLM":
        """Loads a local checkpoint in either format (detected from config.json's model_type).

        Keys, shapes and formats are checked against the model before any tensor is read; on a mismatch a
        ValueError lists the missing, unexpected and mis-shaped keys and nothing is returned.
        dtype: a torch dtype, "auto" (the checkpoint's), or None (float32).
        """
        directory = checkpoint.resolve_directory(path_or_repo_id)
        raw = checkpoint.read_config(directory)
        try:
            config = VideoLLaMA3Config.from_dict(raw)
        except (TypeError, ValueError) as err:  # name the file: the message names the field
            raise type(err)(f"{os.path.join(directory, 'config.json')!r}: {err}") from err
        dtype = _resolve_dtype(dtype, raw)
        device = torch.device(device or "cpu")
        files = checkpoint.weight_files(directory)
        stored = checkpoint.tensor_shapes(files)

        with torch.device("meta"):
            model = cls(config, attn_backend=attn_backend, pruning=pruning)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        names, unexpected, misshaped = {}, [], []
        for key, shape in stored.items():
            name = adapter.checkpoint_to_vl3fast_key(key, config.source_format)
            if name not in expected:
                unexpected.append(key)
                continue
            want = expected[name]
            got = (shape[0], int(torch.Size(shape[1:]).numel())) if name == "vision.patch_embed.weight" else shape
            if tuple(got) != want:
                misshaped.append(f"{key}: checkpoint {tuple(shape)}, config expects {want}")
            names[key] = name
        optional = {"language_model.lm_head.weight"} if config.tie_word_embeddings else set()
        missing = sorted(set(expected) - set(names.values()) - optional)
        if missing or unexpected or misshaped:
            raise ValueError(
                f"checkpoint {directory!r} ({config.source_format} format) does not match the model config:\n"
                f"  missing keys ({len(missing)}): {missing}\n"
                f"  unexpected keys ({len(unexpected)}): {sorted(unexpected)}\n"
                f"  shape mismatches ({len(misshaped)}): {misshaped}"
            )

        model = model.to(dtype).to_empty(device=device)
        if config.tie_word_embeddings:  # to_empty gives tied parameters separate storage: tie them again
            model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
        params = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for key, tensor in checkpoint.iter_tensors(files):
                name = names[key]
                params[name].copy_(adapter.from_checkpoint(name, tensor))
        _reset_buffers(model, device)
        gen_path = os.path.join(directory, "generation_config.json")
        if os.path.isfile(gen_path):
            from transformers import GenerationConfig

            model.language_model.generation_config = GenerationConfig.from_pretrained(directory)
        return model.eval()

    def save_pretrained(self, directory: str, *, max_shard_bytes: int = 5 * 1024**3, fmt: str = "native") -> None:
        """Writes config.json + safetensors in the transformers-native format (transformers'
        VideoLlama3ForConditionalGeneration.from_pretrained loads it) or, with ``fmt="official"``, in the
        official trust_remote_code layout (spec F).  Both load back with ``from_pretrained``.

        Atomic: written into a temporary folder beside ``directory``, then renamed into place, so a failed or
        killed save never leaves a half-written or mixed checkpoint (`checkpoint.atomic_directory`)."""
        if fmt not in ("native", "official"):
            raise ValueError(f"unknown checkpoint format {fmt!r}; supported: 'native', 'official'")
        with checkpoint.atomic_directory(directory) as tmp:
            self._write_checkpoint(tmp, max_shard_bytes, fmt)

    def _write_checkpoint(self, directory: str, max_shard_bytes: int, fmt: str) -> None:
        cfg = self.config.to_dict(fmt)
        cfg["dtype"] = str(self.dtype).removeprefix("torch.")
        # tied lm_head left out: transformers re-ties it from the config
        tensors = adapter.export_tensors(self.state_dict(), fmt, patch_size=self.config.vision.patch_size,
                                         num_channels=self.config.vision.num_channels,
                                         tie_word_embeddings=self.config.tie_word_embeddings)
        checkpoint.save_safetensors(tensors, directory, max_shard_bytes)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        self.language_model.generation_config.save_pretrained(directory)


def _resolve_dtype(dtype, raw_config: dict) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        name = raw_config.get("dtype") or raw_config.get("torch_dtype") or "float32"
        dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, 'auto' or None; got {dtype!r}")
    return dtype


def _reset_buffers(model: VideoLLaMA3ForCausalLM, device: torch.device) -> None:
    """Non-persistent buffers are not in checkpoints and `to_empty` leaves them uninitialized: rebuild them.
    The only one is the LLM's rotary inv_freq (the vision RoPE is computed inside the attention op)."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    llm = model.language_model.model
    with torch.device(device):
        llm.rotary_emb = Qwen2RotaryEmbedding(config=llm.config)
    persistent = set(model.state_dict())
    stray = [n for n, _ in model.named_buffers() if n not in persistent and not n.startswith("language_model.model.rotary_emb.")]
    if stray:
        raise RuntimeError(f"uninitialized non-persistent buffers after loading: {stray}")
