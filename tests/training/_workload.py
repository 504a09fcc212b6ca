"""Training workloads for the training tests, benchmark and GPU smoke run: an init checkpoint of a chosen shape
(random weights, the tiny test tokenizer and processor files) and annotations over synthetic media.

Shapes: "tiny" (the tests' tiny model), "realistic" (the vision encoder at full width and a Qwen2 LLM at 1536
hidden, 2 layers each: issue #12's benchmark model), "2b" (VideoLLaMA3-2B widths and vocabulary, fewer layers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tests.processing._tokenizer import save_hf_processor
from tests.training._fixtures import IMAGE_PAD, RECORDS, TOKENIZER_VOCAB, VIDEO_PAD, write_media

IMAGE_KWARGS = dict(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 24})
VIDEO_KWARGS = dict(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 48})


def model_config(shape: str, text_layers: int = 2, vision_layers: int = 2):
    from vl3fast.models.videollama3 import VideoLLaMA3Config

    if shape == "tiny":
        cfg = VideoLLaMA3Config.from_name("tiny")
        cfg.text.vocab_size = TOKENIZER_VOCAB
    else:
        cfg = VideoLLaMA3Config.from_name("2b")
        cfg.vision.num_hidden_layers, cfg.text.num_hidden_layers = vision_layers, text_layers
        cfg.text.bos_token_id = cfg.text.eos_token_id = None
        if shape == "realistic":
            cfg.text.vocab_size = TOKENIZER_VOCAB
        elif shape != "2b":
            raise ValueError(f"unknown workload shape {shape!r}")
    cfg.image_token_id, cfg.video_token_id = IMAGE_PAD, VIDEO_PAD
    return cfg


def build(root: str | os.PathLike, shape: str, *, copies: int = 8, text_layers: int = 2,
          vision_layers: int = 2, seed: int = 0) -> dict[str, str]:
    """{"init": checkpoint folder, "annotations": JSONL, "media": folder} under root (reused when present)."""
    from vl3fast.models.videollama3 import VideoLLaMA3ForCausalLM

    root = Path(root)
    init, media, ann = root / f"init_{shape}", root / "media", root / "train.jsonl"
    if not (init / "config.json").is_file():
        torch.manual_seed(seed)
        VideoLLaMA3ForCausalLM(model_config(shape, text_layers, vision_layers)).save_pretrained(str(init))
        save_hf_processor(init, image_kwargs=IMAGE_KWARGS, video_kwargs=VIDEO_KWARGS)
    if not media.is_dir():
        write_media(media)
    if not ann.is_file():
        with open(ann, "w") as f:
            for copy in range(copies):
                for record in RECORDS:
                    f.write(json.dumps({**record, "id": f"{record['id']}-{copy}"}) + "\n")
    return {"init": str(init), "annotations": str(ann), "media": str(media)}
