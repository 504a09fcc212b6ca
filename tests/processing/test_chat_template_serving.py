"""`placeholder_chat_template`: the template a caller that expands placeholders itself (vLLM's chat path)
renders before any media is decoded, for the released checkpoints' templates (tests/processing/_templates.py)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from vl3fast.processing import VideoLLaMA3Processor
from vl3fast.processing.chat_template import (
    DEFAULT_CHAT_TEMPLATE, default_chat_template, placeholder_chat_template,
)

from ._templates import NATIVE_TEMPLATE, NATIVE_VARIABLES_TEMPLATE, OFFICIAL_TEMPLATE
from ._tokenizer import CHAT_TEMPLATE, tiny_tokenizer

# what vLLM passes for an OpenAI chat message with an image, a video and a question
CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "What is it?"}]}]


def _render(template: str, conversation=CHAT, **variables) -> str:
    proc = VideoLLaMA3Processor(tiny_tokenizer(), chat_template=template)
    return proc.apply_chat_template(conversation, add_generation_prompt=True, **variables)


@pytest.mark.parametrize("template", [NATIVE_TEMPLATE, CHAT_TEMPLATE, DEFAULT_CHAT_TEMPLATE], ids=["native", "tests",
                                                                                                    "vl3fast"])
def test_placeholder_templates_render_as_they_are(template):
    mapped, kind = placeholder_chat_template(template)
    assert kind == "checkpoint"
    for system in (False, True):
        assert _render(mapped, add_system_prompt=system) == _render(template, add_system_prompt=system)
    assert _render(mapped) == "<|im_start|>user\n<|image_pad|>\n<|video_pad|>\nWhat is it?<|im_end|>\n" \
                              "<|im_start|>assistant\n"


def test_template_variables_get_the_processor_tokens():
    """The earlier native revision reads `image_token` / `video_token` variables; vLLM passes none."""
    with pytest.raises(Exception, match="image_token"):
        _render(NATIVE_VARIABLES_TEMPLATE)
    mapped, kind = placeholder_chat_template(NATIVE_VARIABLES_TEMPLATE)
    assert kind == "checkpoint" and _render(mapped) == _render(NATIVE_TEMPLATE)


def test_qwen_style_wrapped_placeholders_are_the_checkpoints_choice():
    wrapped = NATIVE_TEMPLATE.replace("'<|image_pad|>'", "'<|vision_start|><|image_pad|><|vision_end|>'")
    mapped, kind = placeholder_chat_template(wrapped)
    assert kind == "checkpoint" and "<|vision_start|><|image_pad|><|vision_end|>\n" in _render(mapped)


def test_official_template_cannot_render_before_decoding_and_maps_to_vl3fasts():
    """The official template needs every video's decoded frame count (and an `image_token` variable)."""
    with pytest.raises(Exception):
        _render(OFFICIAL_TEMPLATE)
    mapped, kind = placeholder_chat_template(OFFICIAL_TEMPLATE)
    assert kind == "official"
    for system in (False, True):
        assert _render(mapped, add_system_prompt=system) == _render(DEFAULT_CHAT_TEMPLATE, add_system_prompt=system)


def test_official_template_prompt_equals_the_official_processors(videos):
    """Token for token (pruning off): vl3fast's template + its placeholder expansion == the official template
    rendered with the decoded video (num_frames, timestamps, `<image>` per frame) + the official expansion of
    every `<image>` into that image's / frame's tokens."""
    tok = tiny_tokenizer()
    proc = VideoLLaMA3Processor(tok, chat_template=OFFICIAL_TEMPLATE)
    mapped, _ = placeholder_chat_template(OFFICIAL_TEMPLATE, proc.image_token, proc.video_token)
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    conversation = [{"role": "system", "content": "Be brief."}, *CHAT]
    prompt = proc.apply_chat_template(conversation, chat_template=mapped, add_generation_prompt=True)
    ours = proc(text=prompt, images=[image], videos=[videos["short_10fps"]], use_token_compression=False)

    (t, h, w), m = ours["video_grid_thw"][0].tolist(), int(ours["video_merge_sizes"][0])
    image_tokens = int(ours["image_grid_thw"][0].prod()) // int(ours["image_merge_sizes"][0]) ** 2
    stamps = [float(s) for s in re.findall(r"Time ([\d.]+)s:", tok.decode(ours["input_ids"][0]))]
    assert len(stamps) == t > 1
    decoded = [conversation[0], {"role": "user", "content": [
        CHAT[0]["content"][0], {"type": "video", "num_frames": t, "timestamps": stamps}, CHAT[0]["content"][2]]}]
    official = proc.apply_chat_template(decoded, chat_template=OFFICIAL_TEMPLATE, add_generation_prompt=True,
                                        image_token="<image>")
    # text around the `<image>`s: before the image's, then before each frame's, then after the last frame's
    before_image, after_image, *after_frames = official.split("<image>")
    assert len(after_frames) == t
    expanded = before_image + proc.image_token * image_tokens + after_image + "".join(
        proc.video_token * (h * w // (m * m)) + chunk for chunk in after_frames)
    assert tok(expanded)["input_ids"] == ours["input_ids"][0].tolist()


def test_other_templates_are_refused():
    with pytest.raises(ValueError, match=r"neither as one placeholder each \(<\|image_pad\|> / <\|video_pad\|>\)"):
        placeholder_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")


def test_default_chat_template():
    assert default_chat_template(None) == DEFAULT_CHAT_TEMPLATE
    assert default_chat_template({"default": "a", "other": "b"}) == "a"
    with pytest.raises(ValueError, match="none is named 'default'"):
        default_chat_template({"other": "b"})
