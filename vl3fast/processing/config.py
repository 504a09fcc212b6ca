"""Processing settings: one frozen dataclass shared by preprocessing and `estimate_tokens`.

Because the token estimate and the real preprocessing read the same `ProcessingConfig` and the same
size-planning function (`resize.plan_sizes`), the estimate is exact by construction.

Defaults are those of transformers' `VideoLlama3ImageProcessor` / `VideoLlama3VideoProcessor`
(transformers 5.24) built with no arguments, plus the VideoLLaMA3 sampling of 1 fps, 4..180 frames.
A checkpoint's processor config may override them; pass the overrides as keyword arguments.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .sampling import DEFAULT_FPS, DEFAULT_MAX_FRAMES, DEFAULT_MIN_FRAMES, check_sampling

RESIZE_RULES = ("hf", "official")


@dataclass(frozen=True)
class ProcessingConfig:
    """How images and videos become patches.

    resize_rule: "hf" = transformers' `smart_resize` applied per item (the default);
        "official" = DAMO-NLP-SG/VideoLLaMA3's `simple_batched_resize`: one token budget
        (`max_tokens`) shared by every image and frame of a call, the minimum checked after the
        maximum (spec D).
    image_min_pixels / image_max_pixels: the "hf" bounds for one image (`size.shortest_edge` /
        `size.longest_edge` in transformers' image processor).
    video_min_pixels / video_max_pixels: the "hf" bounds for a video; the maximum is divided by the
        number of sampled frames (transformers' video processor does `longest_edge // num_frames`).
    min_tokens / max_tokens: the "official" bounds in tokens of `(patch_size * merge_size)**2` pixels.
    fps / num_frames / min_frames / max_frames: frame sampling (transformers' `sample_frames`):
        `num_frames` (evenly spaced) takes precedence over `fps`; with `fps` the count is
        `total / video_fps * fps` clamped to [min_frames, max_frames] and to the frame count;
        both None keeps every frame.
    """

    resize_rule: str = "hf"
    patch_size: int = 14
    image_merge_size: int = 1
    video_merge_size: int = 2
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 28 * 28 * 1280
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 28 * 28 * 768
    min_tokens: int = 16
    max_tokens: int = 16384
    fps: float | None = DEFAULT_FPS
    num_frames: int | None = None
    min_frames: int = DEFAULT_MIN_FRAMES
    max_frames: int = DEFAULT_MAX_FRAMES
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        if self.resize_rule not in RESIZE_RULES:
            raise ValueError(f"resize_rule must be one of {RESIZE_RULES}, got {self.resize_rule!r}")
        for name in ("patch_size", "image_merge_size", "video_merge_size",
                     "image_max_pixels", "video_max_pixels", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("image_min_pixels", "video_min_pixels", "min_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        check_sampling(self.fps, self.num_frames, self.min_frames, self.max_frames)

    @property
    def sampling_fps(self) -> float | None:
        """`fps` unless `num_frames` is set (transformers' sampler refuses both at once)."""
        return None if self.num_frames is not None else self.fps

    @classmethod
    def official(cls, **overrides) -> "ProcessingConfig":
        """The DAMO-NLP-SG/VideoLLaMA3 inference settings: official resize rule, 16..16384 tokens."""
        return cls(**{"resize_rule": "official", **overrides})


def resolve_config(config: ProcessingConfig | None, overrides: dict) -> ProcessingConfig:
    """`config` (or the defaults) with keyword overrides applied; unknown names raise TypeError."""
    config = config if config is not None else ProcessingConfig()
    if not overrides:
        return config
    known = {f.name for f in dataclasses.fields(ProcessingConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown processing setting(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **overrides)
