"""The VideoLLaMA3 ChatML template used when a checkpoint ships none (spec D).

ChatML turns (`<|im_start|>role\\n ... <|im_end|>\\n`), the generation prompt `<|im_start|>assistant\\n`;
an image block becomes one image placeholder and a newline, a video block one video placeholder and a
newline. The processor later expands each placeholder: an image into its tokens, a video into
`Time 0.0s:<tokens>,Time 1.0s:<tokens>,...` (transformers' `VideoLlama3Processor.replace_video_token`),
so the rendered video line matches the official template's per-frame layout. `add_system_prompt=True`
prepends the official default system prompt when the conversation has none.

`placeholder_chat_template` gives the template to render *before* the media are decoded (vLLM's chat path) for
a checkpoint's own template: native ones as they are, the official per-frame one as this module's equivalent.
"""
from __future__ import annotations

import json
import re

DEFAULT_SYSTEM_PROMPT = ("You are VideoLLaMA3 created by Alibaba DAMO Academy, a helpful assistant to help people "
                         "understand images and videos.")

DEFAULT_CHAT_TEMPLATE = (
    "{%- set image_token = image_token if image_token is defined else '<|image_pad|>' -%}"
    "{%- set video_token = video_token if video_token is defined else '<|video_pad|>' -%}"
    "{%- for message in messages -%}"
    "{%- if add_system_prompt is defined and add_system_prompt and loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'text' -%}{{- content['text'] -}}"
    "{%- elif content['type'] == 'image' -%}{{- image_token + '\\n' -}}"
    "{%- elif content['type'] == 'video' -%}{{- video_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def default_chat_template(template: str | dict | None) -> str:
    """The template a conversation renders with when none is named: `template` itself, its "default" entry
    when it is a dict of named templates (transformers' rule), `DEFAULT_CHAT_TEMPLATE` when there is none."""
    if template is None:
        return DEFAULT_CHAT_TEMPLATE
    if isinstance(template, dict):
        if "default" not in template:
            raise ValueError(f"the processor has several chat templates and none is named 'default'; pass "
                             f"chat_template= one of {sorted(template)}")
        return template["default"]
    return template


# ---- the template a placeholder-expanding caller (vLLM) renders ------------------------------------------------------
# Conversations rendered through a candidate template to learn how it writes media blocks, in the shape vLLM and
# transformers pass them ({"type": "image"} / {"type": "video"} / {"type": "text", "text": ...}): every block
# kind, text before and after media, string contents, several turns, with and without the generation prompt.
_PROBES = (
    ([{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Q?"}]}], True),
    ([{"role": "system", "content": "S."},
      {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}, {"type": "text", "text": "B"},
                                   {"type": "video"}, {"type": "image"}]},
      {"role": "assistant", "content": "R."}, {"role": "user", "content": "Q2?"}], True),
    ([{"role": "user", "content": "T?"}, {"role": "assistant", "content": [{"type": "text", "text": "U."}]}], False),
)
# frame labels the official layout is probed with (labels that `round(1) | string` and `{:.1f}` write alike)
_PROBE_STAMPS = (0.0, 1.5)


def _render(template: str, conversation: list, add_generation_prompt: bool, **variables) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    prompts, _ = render_jinja_template(conversations=[conversation], chat_template=template,
                                       add_generation_prompt=add_generation_prompt, **variables)
    return prompts[0]


def _pin_tokens(template: str, image_token: str, video_token: str) -> str:
    """`template` with its `image_token` / `video_token` variables set to the processor's tokens (official and
    older transformers templates read them as variables that nothing passes when vLLM renders)."""
    return (f"{{%- set image_token = {json.dumps(image_token)} -%}}"
            f"{{%- set video_token = {json.dumps(video_token)} -%}}" + template)


def _blocks(conversation: list) -> list[str]:
    return [b["type"] for m in conversation if isinstance(m["content"], list) for b in m["content"]
            if b["type"] in ("image", "video")]


def _writes_placeholders(template: str, image_token: str, video_token: str) -> bool:
    """Whether `template` writes every image block as one `image_token` and every video block as one
    `video_token`, in order, on every probe (and with or without the official system prompt)."""
    order = re.compile("|".join(re.escape(t) for t in (image_token, video_token)))
    for conversation, generation in _PROBES:
        for system in (False, True):
            try:
                text = _render(template, conversation, generation, add_system_prompt=system)
            except Exception:  # noqa: BLE001 - any template error means "not this family"
                return False
            found = ["image" if t == image_token else "video" for t in order.findall(text)]
            if found != _blocks(conversation):
                return False
    return True


def _is_official_layout(template: str, image_token: str, video_token: str) -> bool:
    """Whether `template` is the official layout: DAMO-NLP-SG/VideoLLaMA3's chat_template.json writes a video
    block as `Time t.ts:<image>,Time t.ts:<image>...` from the decoded frames' `num_frames` / `timestamps` and
    images as `<image>`, which is exactly what `DEFAULT_CHAT_TEMPLATE` plus the processor's video expansion
    write, one placeholder per frame. Checked by rendering both on every probe."""
    from .prompt import video_expansion

    frames = video_expansion([f"{t:.1f}" for t in _PROBE_STAMPS], [1] * len(_PROBE_STAMPS), image_token)
    default = _pin_tokens(DEFAULT_CHAT_TEMPLATE, image_token, video_token)
    for conversation, generation in _PROBES:
        decoded = [{**m, "content": [dict(b, num_frames=len(_PROBE_STAMPS), timestamps=list(_PROBE_STAMPS))
                                     if b["type"] == "video" else b for b in m["content"]]}
                   if isinstance(m["content"], list) else m for m in conversation]
        for system in (False, True):
            try:
                official = _render(template, decoded, generation, add_system_prompt=system, image_token=image_token)
            except Exception:  # noqa: BLE001
                return False
            ours = _render(default, conversation, generation, add_system_prompt=system)
            if official != ours.replace(video_token, frames):
                return False
    return True


def placeholder_chat_template(template: str, image_token: str = "<|image_pad|>",
                              video_token: str = "<|video_pad|>") -> tuple[str, str]:
    """(template, kind): the chat template to render *before* the media are decoded, by a caller whose processor
    expands each placeholder itself (vLLM's chat path): every image block must become one `image_token` and
    every video block one `video_token`.

    kind "checkpoint": `template` already does that (transformers-native templates, with their
        `image_token` / `video_token` variables pinned to these tokens);
    kind "official": `template` has the official per-frame layout, which needs each video's decoded frame
        count (`num_frames`) while rendering; `DEFAULT_CHAT_TEMPLATE` writes the same prompt once the
        processor has expanded its video placeholder (verified here by rendering both), so that is returned.
    Anything else raises ValueError: substituting a template that renders differently would change prompts.
    """
    pinned = _pin_tokens(template, image_token, video_token)
    if _writes_placeholders(pinned, image_token, video_token):
        return pinned, "checkpoint"
    if _is_official_layout(template, image_token, video_token):
        return _pin_tokens(DEFAULT_CHAT_TEMPLATE, image_token, video_token), "official"
    raise ValueError("the chat template writes image/video blocks neither as one placeholder each "
                     f"({image_token} / {video_token}) nor in the official per-frame layout; pass a chat template "
                     "that does (e.g. vl3fast.processing.chat_template.DEFAULT_CHAT_TEMPLATE)")
