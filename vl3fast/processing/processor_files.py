"""Reading a checkpoint's processor files into a `ProcessingConfig` (local directories only).

Layouts understood:
  transformers >= 5 `save_pretrained`: processor_config.json with nested "image_processor" and
      "video_processor" dicts;
  transformers 4.x: preprocessor_config.json (images) and video_preprocessor_config.json (videos);
  DAMO-NLP-SG/VideoLLaMA3 (official, trust_remote_code): processor_config.json with flat keys
      (fps, max_frames, image_merge_size, video_merge_size) beside preprocessor_config.json.
The chat template comes from chat_template.jinja, chat_template.json or processor_config.json's
"chat_template" (the order transformers reads them in); the tokenizer's own template is the fallback
(`VideoLLaMA3Processor.from_pretrained` applies it).

Settings vl3fast cannot reproduce exactly (another resampling filter, no resizing or normalization,
temporal patches > 1, different patch sizes or normalization for images and videos) raise ValueError
naming the file and key, rather than producing inputs that silently differ from transformers'.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .config import ProcessingConfig

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, what transformers' VideoLLaMA3 processors use


@dataclass(frozen=True)
class ProcessorFiles:
    """What a checkpoint's processor files say.

    config: sizes, merge sizes, sampling and normalization.
    use_token_compression: whether videos get DiffFP compression masks (transformers' default True).
    do_sample_frames: the video processor's flag (transformers' default False; see VideoLLaMA3Processor).
    chat_template: a template string, a dict of named templates, or None.
    sources: the files that were read.
    """

    config: ProcessingConfig
    use_token_compression: bool = True
    do_sample_frames: bool | None = None
    chat_template: str | dict | None = None
    sources: tuple[str, ...] = ()


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _size(d: dict, where: str) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) from transformers' `size` dict or the legacy min/max_pixels keys
    (which win, as in the processors' __init__)."""
    size = d.get("size") or {}
    if size and not {"shortest_edge", "longest_edge"} & set(size):
        raise ValueError(f"{where}: size {size} is not supported; VideoLLaMA3 processors take "
                         "{'shortest_edge': min_pixels, 'longest_edge': max_pixels}")
    lo = d.get("min_pixels", size.get("shortest_edge"))
    hi = d.get("max_pixels", size.get("longest_edge"))
    return lo, hi


def _check_exact(d: dict, where: str) -> None:
    for key in ("do_resize", "do_rescale", "do_normalize"):
        if d.get(key, True) is not True:
            raise ValueError(f"{where}: {key}={d[key]!r} is not supported (vl3fast always resizes, rescales and "
                             "normalizes, as the VideoLLaMA3 checkpoints do)")
    if d.get("resample", BICUBIC) != BICUBIC:
        raise ValueError(f"{where}: resample={d['resample']!r} is not supported; only bicubic (3)")
    if d.get("temporal_patch_size", 1) != 1:
        raise ValueError(f"{where}: temporal_patch_size={d['temporal_patch_size']!r} is not supported; only 1")


def _image_settings(d: dict, where: str) -> dict:
    _check_exact(d, where)
    out = {}
    lo, hi = _size(d, where)
    if lo is not None:
        out["image_min_pixels"] = int(lo)
    if hi is not None:
        out["image_max_pixels"] = int(hi)
    for src, dst in (("patch_size", "patch_size"), ("merge_size", "image_merge_size"),
                     ("rescale_factor", "rescale_factor")):
        if d.get(src) is not None:
            out[dst] = d[src]
    for key in ("image_mean", "image_std"):
        if d.get(key) is not None:
            out[key] = tuple(float(v) for v in d[key])
    return out


def _video_settings(d: dict, where: str) -> dict:
    _check_exact(d, where)
    out = {}
    lo, hi = _size(d, where)
    if lo is not None:
        out["video_min_pixels"] = int(lo)
    if hi is not None:
        out["video_max_pixels"] = int(hi)
    for src, dst in (("merge_size", "video_merge_size"), ("min_frames", "min_frames"), ("max_frames", "max_frames"),
                     ("fps", "fps"), ("num_frames", "num_frames")):
        if d.get(src) is not None:
            out[dst] = d[src]
    return out


def _merge_shared(image: dict, video: dict, where: str) -> dict:
    """One ProcessingConfig holds one patch size and one normalization: the two processors must agree."""
    merged = dict(image)
    for key in ("patch_size", "image_mean", "image_std", "rescale_factor"):
        if video.get(key) is None:
            continue
        value = tuple(float(v) for v in video[key]) if key in ("image_mean", "image_std") else video[key]
        if key in merged and merged[key] != value:
            raise ValueError(f"{where}: the image and video processors differ in {key} ({merged[key]} vs {value}); "
                             "vl3fast supports one value for both")
        merged[key] = value
    return merged


def read_processor_files(directory: str | os.PathLike) -> ProcessorFiles:
    """Settings of the checkpoint in `directory`; transformers' class defaults where a file is silent."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory!r} is not a directory (VideoLLaMA3Processor.from_pretrained reads "
                                "local checkpoint directories only)")
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    sources, image, video, flat = [], {}, {}, {}
    chat_template = None
    if os.path.isfile(path("processor_config.json")):
        proc = _read_json(path("processor_config.json"))
        sources.append("processor_config.json")
        image = proc.get("image_processor") or {}
        video = proc.get("video_processor") or {}
        flat = {k: v for k, v in proc.items() if not isinstance(v, dict)}
        chat_template = proc.get("chat_template")
    if not image and os.path.isfile(path("preprocessor_config.json")):
        image = _read_json(path("preprocessor_config.json"))
        sources.append("preprocessor_config.json")
    if not video and os.path.isfile(path("video_preprocessor_config.json")):
        video = _read_json(path("video_preprocessor_config.json"))
        sources.append("video_preprocessor_config.json")

    settings = _image_settings(image, "image processor config")
    video_settings = _video_settings(video, "video processor config")
    settings = _merge_shared(settings, video, "processor config") | video_settings
    # the official processor_config.json keys (flat), used where the nested configs are silent
    for src, dst in (("image_merge_size", "image_merge_size"), ("video_merge_size", "video_merge_size"),
                     ("fps", "fps"), ("max_frames", "max_frames")):
        if flat.get(src) is not None:
            settings.setdefault(dst, flat[src])
    if settings.get("num_frames") is not None:
        settings["fps"] = None  # transformers refuses both; a fixed frame count is the explicit choice
    try:
        config = ProcessingConfig(**settings)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory}: processor settings {settings} are not valid: {e}") from e

    if os.path.isfile(path("chat_template.jinja")):
        with open(path("chat_template.jinja"), encoding="utf-8") as f:
            chat_template = f.read()
        sources.append("chat_template.jinja")
    elif os.path.isfile(path("chat_template.json")):
        chat_template = _read_json(path("chat_template.json")).get("chat_template")
        sources.append("chat_template.json")
    return ProcessorFiles(
        config=config,
        use_token_compression=bool(video.get("use_token_compression", flat.get("use_token_compression", True))),
        do_sample_frames=video.get("do_sample_frames"),
        chat_template=chat_template,
        sources=tuple(sources),
    )
