"""Builders shared by the training tests and benchmark: media on disk, a tiny processor, matching models."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from tests.models.tiny_vl3 import hf_config, randomize_
from tests.processing._media import write_video
from tests.processing._tokenizer import tiny_tokenizer

# the tiny tokenizer's placeholder ids and size (tests/processing/_tokenizer.py)
IMAGE_PAD, VIDEO_PAD, TOKENIZER_VOCAB = 5, 6, 300


def mostly_static(i: int, height: int, width: int) -> np.ndarray:
    """A fixed gradient with one 16x16 square that moves every frame: most merged tokens repeat the previous
    frame exactly, so DiffFP prunes them."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 4) % 256, (yy * 4) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
    y, x = (5 * i) % (height - 16), (7 * i) % (width - 16)
    img[y:y + 16, x:x + 16] = 255
    return img


def write_media(folder) -> dict[str, str]:
    """Images of several sizes and two short videos with static regions (so DiffFP prunes)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    g = np.random.default_rng(0)
    names = {}
    for name, (h, w) in {"a.png": (60, 80), "b.png": (90, 40), "c.jpg": (30, 30)}.items():
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(folder, name))
        names[name] = os.path.join(folder, name)
    names["v.mkv"] = write_video(os.path.join(folder, "v.mkv"), width=112, height=84, fps=4, frames=24, codec="ffv1",
                                 pattern=mostly_static)
    names["w.mp4"] = write_video(os.path.join(folder, "w.mp4"), width=56, height=56, fps=2, frames=10)
    return names


def tiny_processor():
    from vl3fast.processing import ProcessingConfig, VideoLLaMA3Processor

    config = ProcessingConfig(image_max_pixels=28 * 28 * 24, video_min_pixels=28 * 28 * 4,
                              video_max_pixels=28 * 28 * 48, max_frames=6)
    return VideoLLaMA3Processor(tiny_tokenizer(), config)


def hf_model(seed: int = 0, tie: bool = False, vision_head_dim: int = 72):
    """transformers' VideoLlama3ForConditionalGeneration sized for the tiny tokenizer, random weights."""
    from transformers import VideoLlama3ForConditionalGeneration

    cfg = hf_config(vision_head_dim, tie)
    cfg.image_token_id, cfg.video_token_id = IMAGE_PAD, VIDEO_PAD
    cfg.text_config.vocab_size = TOKENIZER_VOCAB
    torch.manual_seed(seed)
    model = VideoLlama3ForConditionalGeneration(cfg)
    randomize_(model, seed)
    return model.float()


def vl3_from_hf(hf, directory, **kwargs):
    from vl3fast.models.videollama3 import VideoLLaMA3ForCausalLM

    hf.save_pretrained(str(directory))
    return VideoLLaMA3ForCausalLM.from_pretrained(str(directory), **kwargs)


RECORDS = [
    {"id": "img", "image": "a.png",
     "conversations": [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                       {"from": "gpt", "value": "What is shown is brighter."}]},
    {"id": "multi", "image": ["b.png", "c.jpg"],
     "conversations": [{"from": "system", "value": "You are a helpful assistant."},
                       {"from": "human", "value": "<image>\n<image>\nCompare these two pictures."},
                       {"from": "gpt", "value": "Which one is brighter?"},
                       {"from": "human", "value": "Describe the image."},
                       {"from": "gpt", "value": "In detail: 12.5"}]},
    {"id": "vid", "video": ["v.mkv"],
     "conversations": [{"from": "human", "value": "<video>\nWhat is shown in this video?"},
                       {"from": "gpt", "value": "Time 1.5s: a picture."}]},
    {"id": "text", "conversations": [{"from": "human", "value": "Which one is brighter?"},
                                     {"from": "gpt", "value": "The image."}]},
    {"id": "mixed", "messages": [{"role": "user", "content": "<video><image>Compare these."},
                                 {"role": "assistant", "content": "Describe this video."}],
     "images": ["a.png"], "videos": [{"path": "w.mp4", "start": 1.0, "end": 4.5, "fps": 1, "max_frames": 4}]},
    {"id": "text2", "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 12?"}]},
                                 {"role": "assistant", "content": "It is 12.5s."}]},
]


def write_annotations(path, records=RECORDS) -> str:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def hf_inputs(enc) -> dict:
    """One encoded sample as transformers' processor dict (images and videos split by kind)."""
    out = {"input_ids": enc.input_ids[None], "labels": enc.labels[None]}
    if enc.grid_thw.shape[0]:
        patches = enc.grid_thw.prod(1)
        tokens = patches // enc.merge_sizes ** 2
        px, keep = enc.pixel_values.split(patches.tolist()), enc.keep_mask.split(tokens.tolist())
        for kind, sel, keys in (("image", ~enc.is_video, ("pixel_values", "image_grid_thw", "image_merge_sizes")),
                                ("video", enc.is_video, ("pixel_values_videos", "video_grid_thw", "video_merge_sizes"))):
            idx = sel.nonzero()[:, 0].tolist()
            if idx:
                out[keys[0]] = torch.cat([px[i] for i in idx])
                out[keys[1]] = enc.grid_thw[idx]
                out[keys[2]] = enc.merge_sizes[idx]
                if kind == "video":
                    out["video_compression_mask"] = torch.cat([keep[i] for i in idx])
    return out
