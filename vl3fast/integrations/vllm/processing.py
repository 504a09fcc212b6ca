"""vLLM's multimodal processor for VideoLLaMA3, on vl3fast's processing (runs in the API-server process).

Per request (mm_processor_kwargs: fps, num_frames, min_frames, max_frames, the pixel limits,
use_token_compression, on top of the checkpoint's processor files and `--mm-processor-kwargs`):
- every image and video is processed alone, with vl3fast's `preprocess_images` / `preprocess_videos`
  (the pixels of `vl3fast.VideoLLaMA3Processor`); encoded media are decoded from their original bytes;
- the planned token count is checked against the per-item bound *before* decoding: the un-pruned bound
  that sized vLLM's encoder cache (`max_item_tokens` / `max_video_tokens`, capped at max_model_len), so an
  over-budget video is a 400 naming it, never an engine failure;
- the DiffFP keep mask is computed here with vl3fast's bit-exact `frame_keep_mask`, and each video
  placeholder becomes exactly its kept tokens with the per-frame "Time t s:" text
  (`processing.prompt.video_expansion`), as transformers' processor writes it.

Processed fields (per item, as vLLM batches them): pixel_values [P, 588], image_grid_thw [3],
image_merge_sizes []; pixel_values_videos, video_grid_thw, video_merge_sizes, video_compression_mask [M]
(bool, M = un-pruned merged tokens), video_time_tenths [T] (the frame labels in tenths of a second).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np
import torch
from transformers import BatchFeature
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo, PromptReplacement, PromptUpdateDetails,
)

from ... import ops
from ...models.videollama3 import checkpoint
from ...processing import VideoLLaMA3Processor, preprocess_images, preprocess_videos, read_processor_files
from ...processing.errors import MediaError
from ...processing.image import load_image
from ...processing.prompt import video_expansion
from ...processing.resize import ItemShape, max_item_tokens, max_video_tokens, plan_sizes
from .config import vl3_config
from .media import LOADER, EncodedVideo, make_parser

# Per-request settings (mm_processor_kwargs); everything else is the checkpoint's.
REQUEST_SETTINGS = ("fps", "num_frames", "min_frames", "max_frames", "image_min_pixels", "image_max_pixels",
                    "video_min_pixels", "video_max_pixels", "use_token_compression")
DECODE_TIMEOUT_S = 120.0


def _tenths(label: str) -> int:
    whole, _, frac = label.partition(".")
    return int(whole) * 10 + int(frac or 0)


def _label(tenths: int) -> str:
    return f"{tenths // 10}.{tenths % 10}"


class VideoLLaMA3ProcessingInfo(BaseProcessingInfo):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        # Videos of this model reach the processor undecoded (media.EncodedVideo) unless the server was told
        # otherwise: vLLM picks loaders by the checkpoint's video-processor class, which it cannot see in
        # transformers-5 processor files or without torchvision, and would decode 32 frames with OpenCV first.
        mm_config = ctx.model_config.multimodal_config
        if mm_config is not None:
            mm_config.media_io_kwargs.setdefault("video", {}).setdefault("video_backend", LOADER)

    @cached_property
    def vl3_config(self):
        return vl3_config(self.get_hf_config())

    @cached_property
    def processor(self) -> VideoLLaMA3Processor:
        """vl3fast's processor with the checkpoint's processor files and vLLM's tokenizer."""
        directory = checkpoint.resolve_directory(self.ctx.model_config.model)
        files = read_processor_files(directory)
        proc = VideoLLaMA3Processor(self.get_tokenizer(), files.config, chat_template=files.chat_template,
                                    use_token_compression=files.use_token_compression
                                    and self.vl3_config.use_token_compression,
                                    do_sample_frames=files.do_sample_frames)
        if proc.config.resize_rule != "hf":
            raise ValueError("resize_rule='official' shares one token budget over all media of a call, but vLLM "
                             "processes (and caches) every item on its own; serve with the 'hf' rule")
        return proc

    def get_hf_processor(self, **kwargs: object) -> VideoLLaMA3Processor:
        return self.processor

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set(), "images_kwargs": set(REQUEST_SETTINGS), "videos_kwargs": set(REQUEST_SETTINGS)}

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "video": None}

    def get_data_parser(self):
        return make_parser(self)

    # ---- settings and budgets ------------------------------------------------------------------------------
    def settings(self, request_kwargs: Mapping[str, object]):
        """(ProcessingConfig, use_token_compression) for a request: the checkpoint's settings, then the
        server's --mm-processor-kwargs, then the request's mm_processor_kwargs."""
        merged = dict(self.ctx.get_merged_mm_kwargs(request_kwargs))
        for scope in ("images_kwargs", "videos_kwargs", "text_kwargs", "audio_kwargs"):
            merged.update(merged.pop(scope, None) or {})
        unknown = sorted(set(merged) - set(REQUEST_SETTINGS))
        if unknown:
            raise ValueError(f"unknown mm_processor_kwargs {unknown}; VideoLLaMA3 takes {list(REQUEST_SETTINGS)}")
        compress = merged.pop("use_token_compression", self.processor.use_token_compression)
        if not isinstance(compress, bool):
            raise ValueError(f"use_token_compression must be true or false, got {compress!r}")
        try:
            config = self.processor._settings(merged)  # fps and num_frames replace each other, as in the processor
        except TypeError as e:
            raise ValueError(str(e)) from e
        return config, compress

    @cached_property
    def token_bounds(self) -> dict[str, int]:
        """Un-pruned tokens one image / video may become under the server's settings, capped at max_model_len:
        what sizes vLLM's encoder cache, and what every request is checked against before decoding."""
        config, _ = self.settings({})
        seq_len = self.ctx.model_config.max_model_len
        return {"image": min(max_item_tokens(config), seq_len), "video": min(max_video_tokens(config), seq_len)}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {kind: min(bound, seq_len) for kind, bound in self.token_bounds.items()}


class VideoLLaMA3DummyInputsBuilder(BaseDummyInputsBuilder[VideoLLaMA3ProcessingInfo]):
    """Profiling inputs at the token bounds: a white image of the largest planned size and a video of noise
    frames (DiffFP keeps every token of noise) with as many frames as the bound allows."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        proc = self.info.processor
        return proc.image_token * mm_counts.get("image", 0) + proc.video_token * mm_counts.get("video", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options) -> dict:
        config, _ = self.info.settings({})
        bounds = self.info.token_bounds
        side = int(config.image_max_pixels ** 0.5)
        while side > config.patch_size and plan_sizes([ItemShape(side, side)], config)[0].num_tokens > bounds["image"]:
            side = side * 3 // 4
        block = config.patch_size * config.video_merge_size
        frames = config.num_frames or config.max_frames
        while frames > 1 and plan_sizes([ItemShape(block, block, frames)], config)[0].num_tokens > bounds["video"]:
            frames -= 1
        noise = np.random.default_rng(0).integers(0, 256, (frames, block, block, 3), dtype=np.uint8)
        n_images, n_videos = mm_counts.get("image", 0), mm_counts.get("video", 0)
        return {
            "image": self._get_dummy_images(width=side, height=side, num_images=n_images,
                                            overrides=mm_options.get("image")) if n_images else [],
            "video": [noise] * n_videos,
        }


class VideoLLaMA3MultiModalProcessor(BaseMultiModalProcessor[VideoLLaMA3ProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        config, compress = self.info.settings(hf_kwargs)
        bounds = self.info.token_bounds
        dtype = self.info.ctx.model_config.dtype
        out: dict[str, list[torch.Tensor]] = {}
        for i, image in enumerate(hf_data.get("images") or []):
            with _as_file(image, f"image {i}") as source:
                vis = preprocess_images([source], config, max_visual_tokens=bounds["image"])
            for key, value in (("pixel_values", vis.pixel_values.to(dtype)), ("image_grid_thw", vis.grid_thw),
                               ("image_merge_sizes", vis.merge_sizes)):
                out.setdefault(key, []).append(value)
        for k, video in enumerate(hf_data.get("videos") or []):
            frames, metadata = video if isinstance(video, tuple) else (video, None)
            with _as_file(frames, f"video {k}") as source:
                prepared, labelers = self.info.processor._prepare_videos([source], [metadata], config, False)
                vis = preprocess_videos(prepared, config, max_visual_tokens=bounds["video"], timeout=DECODE_TIMEOUT_S)
            labels = labelers[0](vis, 0)
            if compress:
                mask = ops.frame_keep_mask(vis.pixel_values, vis.grid_thw, vis.merge_sizes)
            else:
                mask = torch.ones(vis.num_tokens[0], dtype=torch.bool)
            for key, value in (("pixel_values_videos", vis.pixel_values.to(dtype)), ("video_grid_thw", vis.grid_thw),
                               ("video_merge_sizes", vis.merge_sizes), ("video_compression_mask", mask),
                               ("video_time_tenths", torch.tensor([_tenths(s) for s in labels], dtype=torch.int64))):
                out.setdefault(key, []).append(value)
        return BatchFeature({key: torch.cat(parts) for key, parts in out.items()})

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, object]:
        from vllm.multimodal.inputs import MultiModalFieldConfig as Field

        empty = torch.empty((0, 3), dtype=torch.int64)
        image_grid, video_grid = hf_inputs.get("image_grid_thw", empty), hf_inputs.get("video_grid_thw", empty)
        video_merge = hf_inputs.get("video_merge_sizes", torch.empty(0, dtype=torch.int64))
        return dict(
            pixel_values=Field.flat_from_sizes("image", image_grid.prod(-1)),
            image_grid_thw=Field.batched("image", keep_on_cpu=True),
            image_merge_sizes=Field.batched("image", keep_on_cpu=True),
            pixel_values_videos=Field.flat_from_sizes("video", video_grid.prod(-1)),
            video_grid_thw=Field.batched("video", keep_on_cpu=True),
            video_merge_sizes=Field.batched("video", keep_on_cpu=True),
            video_compression_mask=Field.flat_from_sizes("video", video_grid.prod(-1) // video_merge**2,
                                                         keep_on_cpu=True),
            video_time_tenths=Field.flat_from_sizes("video", video_grid[:, 0], keep_on_cpu=True),
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        proc, tokenizer = self.info.processor, self.info.get_tokenizer()

        def image_tokens(i: int) -> list[int]:
            item = out_mm_kwargs["image"][i]
            m = int(item["image_merge_sizes"].data)
            return [proc.image_token_id] * (int(item["image_grid_thw"].data.prod()) // (m * m))

        def video_tokens(k: int) -> PromptUpdateDetails:
            item = out_mm_kwargs["video"][k]
            kept = ops.PackedGrid.from_grid(item["video_grid_thw"].data.view(1, 3), item["video_merge_sizes"].data.view(1),
                                            keep=item["video_compression_mask"].data).kept_per_frame
            labels = [_label(x) for x in item["video_time_tenths"].data.tolist()]
            ids = tokenizer.encode(video_expansion(labels, kept, proc.video_token), add_special_tokens=False)
            return PromptUpdateDetails.select_token_id(ids, proc.video_token_id)

        return [PromptReplacement(modality="image", target=[proc.image_token_id], replacement=image_tokens),
                PromptReplacement(modality="video", target=[proc.video_token_id], replacement=video_tokens)]


@contextlib.contextmanager
def _as_file(item, name: str):
    """An encoded image/video (vLLM's MediaWithBytes, or an EncodedVideo) as a temporary file for vl3fast's
    path-based loaders, decoded inputs (PIL images, frame arrays) as they are. Media errors raised inside
    name the request's item ("video 0"), not the temporary file."""
    from PIL import Image
    from vllm.multimodal.media import MediaWithBytes

    data = item.original_bytes if isinstance(item, MediaWithBytes) else \
        item.data if isinstance(item, EncodedVideo) else None
    path = None
    try:
        if data is None:
            yield load_image(item) if isinstance(item, Image.Image) else item
            return
        fd, path = tempfile.mkstemp(prefix="vl3fast-", suffix=".media")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    except MediaError as e:
        message = str(e)
        if path is not None:
            message = message.replace(repr(path), name).replace(path, name).replace(os.path.basename(path), name)
        raise type(e)(message if message.startswith(name) else f"{name}: {message}") from e
    finally:
        if path is not None:
            os.unlink(path)
