"""Prompts built the official way: one <image> placeholder (config `image_token_index`, 151665 in the released
configs) for images and video frames, and with `use_token_compression` the model-side DiffFP pruning of a prompt
that carries every merged token's placeholder.  Each must give what the equivalent transformers-style prompt
(<|image_pad|> / <|video_pad|>, processor-pruned) gives, which the parity tests tie to transformers."""
from __future__ import annotations

import pytest
import torch

from vl3fast.models.videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM

from .tiny_vl3 import IMAGE_ID, PROMPTS, VIDEO_ID, left_pad_batch, randomize_, rel_err, video_prompt

OFFICIAL_ID = 122  # stands in for 151665 in the 128-token tiny vocabulary (prompt text uses ids < 100)
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def model():
    config = VideoLLaMA3Config.from_name("tiny")
    config.legacy_image_token_index = OFFICIAL_ID
    torch.manual_seed(0)
    m = VideoLLaMA3ForCausalLM(config).eval()
    randomize_(m, seed=3)
    return m


def _official_video(p: dict) -> dict:
    """The official processor's prompt for the same video: one <image> per merged token, no mask."""
    keep = p["video_compression_mask"]
    ids = p["input_ids"][0].tolist()
    first = ids.index(VIDEO_ID)
    ids = ids[:first] + [OFFICIAL_ID] * keep.numel() + ids[first + int(keep.sum()):]
    out = {k: v for k, v in p.items() if k != "video_compression_mask"}
    out.update(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out


def _greedy(model, inputs):
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[:, -NEW_TOKENS:]


@pytest.mark.parametrize("prompt", ["image", "multi_image"])
def test_official_image_placeholder(model, prompt):
    native = PROMPTS[prompt]()
    official = dict(native, input_ids=native["input_ids"].masked_fill(native["input_ids"] == IMAGE_ID, OFFICIAL_ID))
    with torch.no_grad():
        assert rel_err(model(**official).logits, model(**native).logits) == 0.0
    assert torch.equal(_greedy(model, official), _greedy(model, native))


def test_official_video_is_pruned_in_the_model(model):
    native = video_prompt()
    assert int(native["video_compression_mask"].sum()) < native["video_compression_mask"].numel()
    official = _official_video(native)
    assert official["input_ids"].shape[1] > native["input_ids"].shape[1]
    with torch.no_grad():
        assert rel_err(model(**official).logits, model(**native).logits) == 0.0
    assert torch.equal(_greedy(model, official), _greedy(model, native))
    model.pruning = "before"
    try:
        assert torch.equal(_greedy(model, official), _greedy(model, native))
    finally:
        model.pruning = "after"


def test_official_video_without_token_compression_keeps_every_token(model):
    native = video_prompt()
    official = _official_video(native)
    unpruned = dict(official, input_ids=official["input_ids"].masked_fill(official["input_ids"] == OFFICIAL_ID,
                                                                          VIDEO_ID))
    model.config.use_token_compression = False
    try:
        with torch.no_grad():
            got = model(**official).logits
            want = model(**unpruned).logits
            pruned = model(**native).logits
    finally:
        model.config.use_token_compression = True
    assert got.shape == want.shape and rel_err(got, want) == 0.0
    assert got.shape[1] > pruned.shape[1]


def test_official_batch_matches_single_prompts(model):
    """Model-side pruning shortens rows by different amounts: the batch is re-left-padded."""
    singles = [_official_video(video_prompt()), _official_video(video_prompt(seed=7, static={1: [1], 3: [0, 4]})),
               PROMPTS["text"]()]
    batch = left_pad_batch(singles)
    got = _greedy(model, batch)
    for i, p in enumerate(singles):
        assert torch.equal(got[i], _greedy(model, p)[0]), i


def test_official_placeholder_errors(model):
    image, video = PROMPTS["image"](), _official_video(video_prompt())
    both = dict(image, pixel_values_videos=video["pixel_values_videos"], video_grid_thw=video["video_grid_thw"],
                video_merge_sizes=video["video_merge_sizes"])
    both["input_ids"] = image["input_ids"].masked_fill(image["input_ids"] == IMAGE_ID, OFFICIAL_ID)
    with pytest.raises(ValueError, match="images and video frames alike"):
        model(**both)
    text = PROMPTS["text"]()
    text["input_ids"][0, 1] = OFFICIAL_ID
    with pytest.raises(ValueError, match="no pixel_values or pixel_values_videos"):
        model(**text)
    wrong = dict(video, input_ids=torch.cat([video["input_ids"], torch.tensor([[OFFICIAL_ID]])], 1))
    with pytest.raises(ValueError, match="video placeholder count does not match"):
        model(**wrong)
