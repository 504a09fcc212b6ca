"""Chat templates as the released VideoLLaMA3 checkpoints ship them, restated for tests (no hub access).

OFFICIAL_TEMPLATE follows the rules of DAMO-NLP-SG/VideoLLaMA3-{2B,7B}'s chat_template.json: ChatML turns, the
`stream` role with `<|stream_start|>` / `<|stream_end|>`, the default system prompt under `add_system_prompt`,
images as `image_token` + newline (optionally after `Time t.ts: `), and a video as one `image_token` per
decoded frame (`num_frames`, optional `timestamps`) joined by "," and ended by a newline. `image_token` is a
variable the official processor passes ("<image>"); nothing else does.

NATIVE_TEMPLATE follows the transformers-native conversion (lkhl/VideoLLaMA3-2B-Image-HF chat_template.jinja):
the same turns, each image block one `<|image_pad|>`, each video block one `<|video_pad|>`, both newline-ended.
NATIVE_VARIABLES_TEMPLATE is its earlier revision, which reads the placeholders from `image_token` /
`video_token` variables. Placeholders are joined with `+`, as in the released files: an undefined variable
then fails to render instead of rendering as "".
"""
from vl3fast.processing.chat_template import DEFAULT_SYSTEM_PROMPT

_TURN_OPEN = (
    "{%- set ns = namespace(tag='im') -%}"
    "{%- for message in messages -%}"
    "{%- if add_system_prompt and loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- set ns.tag = 'stream' if message['role'] == 'stream' else 'im' -%}"
    "{{- '<|' ~ ns.tag ~ '_start|>' ~ message['role'] ~ '\\n' -}}"
)
_TURN_CLOSE = "{{- '<|' ~ ns.tag ~ '_end|>' -}}{%- if ns.tag != 'stream' -%}{{- '\\n' -}}{%- endif -%}"
_GENERATION = "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"

OFFICIAL_TEMPLATE = (
    _TURN_OPEN
    + "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block is string -%}{{- block -}}"
    "{%- elif block['type'] == 'text' or 'text' in block -%}{{- block['text'] -}}"
    "{%- elif block['type'] == 'image' or 'image' in block -%}"
    "{%- if 'timestamp' in block -%}{{- 'Time ' ~ (block['timestamp'] | round(1) | string) ~ 's: ' -}}{%- endif -%}"
    "{{- image_token + '\\n' -}}"
    "{%- elif block['type'] == 'video' or 'video' in block -%}"
    "{%- for i in range(block['num_frames']) -%}"
    "{%- if 'timestamps' in block -%}{{- 'Time ' ~ (block['timestamps'][i] | round(1) | string) ~ 's:' -}}"
    "{%- endif -%}"
    "{{- image_token + (',' if not loop.last else '\\n') -}}"
    "{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    + _TURN_CLOSE + _GENERATION
)

_NATIVE_BODY = (
    _TURN_OPEN
    + "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}"
    "{%- elif block['type'] == 'image' -%}{{- IMAGE + '\\n' -}}"
    "{%- elif block['type'] == 'video' -%}{{- VIDEO + '\\n' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    + _TURN_CLOSE + _GENERATION
)
NATIVE_TEMPLATE = _NATIVE_BODY.replace("IMAGE", "'<|image_pad|>'").replace("VIDEO", "'<|video_pad|>'")
NATIVE_VARIABLES_TEMPLATE = _NATIVE_BODY.replace("IMAGE", "image_token").replace("VIDEO", "video_token")
