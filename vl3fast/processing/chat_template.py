"""The VideoLLaMA3 ChatML template used when a checkpoint ships none (spec D).

ChatML turns (`<|im_start|>role\\n ... <|im_end|>\\n`), the generation prompt `<|im_start|>assistant\\n`;
an image block becomes one image placeholder and a newline, a video block one video placeholder and a
newline. The processor later expands each placeholder: an image into its tokens, a video into
`Time 0.0s:<tokens>,Time 1.0s:<tokens>,...` (transformers' `VideoLlama3Processor.replace_video_token`),
so the rendered video line matches the official template's per-frame layout. `add_system_prompt=True`
prepends the official default system prompt when the conversation has none.
"""

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
