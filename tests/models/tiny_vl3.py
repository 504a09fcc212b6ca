"""Tiny random transformers VideoLLaMA3 models in both checkpoint formats, and prompt builders (processor dicts)."""
from __future__ import annotations

import json
import os

import torch

IMAGE_ID, VIDEO_ID, VOCAB = 120, 121, 128


def hf_config(vision_head_dim: int, tie: bool, vision_layers: int = 2):
    from transformers import VideoLlama3Config

    heads = 2
    return VideoLlama3Config(
        vision_config=dict(hidden_size=heads * vision_head_dim, intermediate_size=160, num_hidden_layers=vision_layers,
                           num_attention_heads=heads, patch_size=14),
        text_config=dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, tie_word_embeddings=tie,
    )


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from transformers' 0.02-std init, so logits are well separated and greedy tokens stable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)


def build_hf_model(vision_head_dim: int, tie: bool, seed: int = 0, vision_layers: int = 2):
    from transformers import VideoLlama3ForConditionalGeneration

    torch.manual_seed(seed)
    model = VideoLlama3ForConditionalGeneration(hf_config(vision_head_dim, tie, vision_layers)).eval()
    randomize_(model, seed)
    if tie:
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    return model


def native_to_official_key(key: str) -> str:
    """Renaming written out here independently of vl3fast's adapter (spec F)."""
    for old, new in (("model.vision_model.", "model.vision_encoder."), ("model.projector.", "model.mm_projector."),
                     ("model.language_model.", "model.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def write_official(native_dir: str, official_dir: str) -> None:
    """An official-format (videollama3_qwen2) checkpoint from a transformers-native one: keys renamed,
    config.json rewritten as the trust_remote_code model writes it."""
    from safetensors.torch import load_file, save_file

    os.makedirs(official_dir, exist_ok=True)
    tensors = load_file(os.path.join(native_dir, "model.safetensors"))
    save_file({native_to_official_key(k): v for k, v in tensors.items()},
              os.path.join(official_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(native_dir, "config.json")) as f:
        native = json.load(f)
    text, vision = native["text_config"], native["vision_config"]
    official = {k: v for k, v in text.items() if k not in ("rope_parameters", "model_type", "layer_types")}
    official.update(
        model_type="videollama3_qwen2", architectures=["Videollama3Qwen2ForCausalLM"],
        rope_theta=text["rope_parameters"]["rope_theta"], tie_word_embeddings=native["tie_word_embeddings"],
        vision_encoder=None, mm_projector_type="mlp2x_gelu", use_token_compression=True, image_token_index=IMAGE_ID,
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_encoder_config={k: v for k, v in vision.items() if k != "rope_parameters"}
        | {"model_type": "videollama3_vision_encoder"},
        auto_map={"AutoModelForCausalLM": "modeling_videollama3.Videollama3Qwen2ForCausalLM"},
    )
    with open(os.path.join(official_dir, "config.json"), "w") as f:
        json.dump(official, f)


# ---- prompts: the dict transformers' processor would produce ------------------------------------------------------
def _text(n: int, g: torch.Generator) -> list[int]:
    return torch.randint(0, 100, (n,), generator=g).tolist()


def image_prompt(grids, merges, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor(grids, dtype=torch.long)
    merge = torch.tensor(merges, dtype=torch.long)
    ids = _text(3, g)
    for (t, h, w), m in zip(grids, merges):
        ids += [IMAGE_ID] * (t * h * w // (m * m)) + _text(2, g)
    pixels = torch.rand(int(grid.prod(1).sum()), 588, generator=g) * 2 - 1
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": pixels, "image_grid_thw": grid, "image_merge_sizes": merge}


def video_pixels(t: int, h: int, w: int, m: int, static_tokens: dict[int, list[int]], seed: int) -> torch.Tensor:
    """Random frames in merge-block order; token j of frame f in static_tokens[f] repeats frame f-1 exactly."""
    g = torch.Generator().manual_seed(seed)
    tokens, block = (h // m) * (w // m), m * m
    frames = torch.rand(t, tokens, block * 588, generator=g) * 2 - 1
    for f, js in static_tokens.items():
        frames[f, js] = frames[f - 1, js]
    return frames.reshape(t * h * w, 588)


def video_prompt(seed: int = 2, grid=(4, 4, 6), m: int = 2, static=None) -> dict:
    from vl3fast.reference import frame_keep_mask

    g = torch.Generator().manual_seed(seed)
    static = {1: [0, 2, 3], 2: [0, 1, 2, 3, 4, 5], 3: [5]} if static is None else static
    pixels = video_pixels(*grid, m, static, seed)
    grid_t, merge_t = torch.tensor([grid]), torch.tensor([m])
    keep = frame_keep_mask(pixels, grid_t, merge_t)
    ids = _text(4, g) + [VIDEO_ID] * int(keep.sum()) + _text(3, g)
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values_videos": pixels, "video_grid_thw": grid_t, "video_merge_sizes": merge_t,
            "video_compression_mask": keep}


def text_prompt(seed: int = 3, n: int = 9) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = _text(n, g)
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long)}


PROMPTS = {
    "image": lambda: image_prompt([[1, 6, 8]], [1]),
    "multi_image": lambda: image_prompt([[1, 4, 6], [1, 6, 4], [1, 2, 2]], [1, 2, 1], seed=4),
    "pruned_video": lambda: video_prompt(),
    "text": lambda: text_prompt(),
}


def left_pad_batch(prompts: list[dict], pad_id: int = 0) -> dict:
    """One batch from single prompts: left padding, visual tensors concatenated in batch order."""
    return pad_batch(prompts, pad_id, side="left")


def pad_batch(prompts: list[dict], pad_id: int = 0, side: str = "left") -> dict:
    """One batch from single prompts padded on `side` (right for training), visual tensors concatenated in
    batch order; "labels", when the prompts have them, are padded with -100."""
    length = max(p["input_ids"].shape[1] for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    labels = torch.full((len(prompts), length), -100, dtype=torch.long)
    for i, p in enumerate(prompts):
        n = p["input_ids"].shape[1]
        cols = slice(length - n, length) if side == "left" else slice(0, n)
        ids[i, cols] = p["input_ids"][0]
        mask[i, cols] = 1
        if "labels" in p:
            labels[i, cols] = p["labels"][0]
    batch = {"input_ids": ids, "attention_mask": mask}
    if all("labels" in p for p in prompts):
        batch["labels"] = labels
    for key in ("pixel_values", "image_grid_thw", "image_merge_sizes", "pixel_values_videos", "video_grid_thw",
                "video_merge_sizes", "video_compression_mask"):
        parts = [p[key] for p in prompts if key in p]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
