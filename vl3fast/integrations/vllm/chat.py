"""The chat template vLLM renders for VideoLLaMA3 checkpoints (chat completions, `LLM.chat`).

vLLM renders a chat with a template *before* any media is decoded; the plugin's processor then expands each
placeholder into the item's tokens (a video into its `Time t.ts:` labels and kept tokens). So the template
must write every image block as one image placeholder and every video block as one video placeholder.
transformers-native checkpoints ship such a template (only their `image_token` / `video_token` variables,
in one revision, need values). The official checkpoints' chat_template.json does not: it writes one
`<image>` per *decoded frame* of a video (`num_frames`, `timestamps`, which do not exist yet when vLLM
renders) and reads `image_token` from a variable only the official processor passes, so vLLM cannot render
it. `vl3fast.processing.chat_template.placeholder_chat_template` maps the checkpoint's template to one that
vLLM can render and that gives the same prompt once the processor has expanded it (the official layout is
checked against vl3fast's template by rendering both).

vLLM picks renderers by tokenizer mode from its `RENDERER_REGISTRY`; the plugin puts this subclass of vLLM's
`HfRenderer` under "hf". For any other architecture it is vLLM's HfRenderer unchanged. A request's or the
server's own `chat_template` is used as given, mapped the same way when it has the official layout.
"""
from __future__ import annotations

import dataclasses
import functools

from vllm.logger import init_logger
from vllm.renderers.hf import HfRenderer

from ...processing.chat_template import default_chat_template, placeholder_chat_template
from ...processing.processor import checkpoint_chat_template, placeholder_tokens

logger = init_logger(__name__)


@functools.lru_cache(maxsize=32)
def _mapped(template: str, image_token: str, video_token: str) -> tuple[str, str] | None:
    try:
        return placeholder_chat_template(template, image_token, video_token)
    except ValueError:
        return None


class VideoLLaMA3Renderer(HfRenderer):
    """vLLM's HfRenderer; for VideoLLaMA3 checkpoints, chats render with `placeholder_chat_template`."""

    def __init__(self, config, tokenizer) -> None:
        super().__init__(config, tokenizer)
        self._tokens: tuple[str, str] | None = None
        self._template: str | None = None
        from . import ARCHITECTURES

        archs = set(getattr(self.model_config.hf_config, "architectures", None) or ())
        if archs & set(ARCHITECTURES) and self.tokenizer is not None:
            self._tokens = placeholder_tokens(self.tokenizer)
            self._template = self._checkpoint_template()

    def _checkpoint_template(self) -> str | None:
        """The checkpoint's template (processor files first, then the tokenizer's, as
        `VideoLLaMA3Processor.from_pretrained` reads it), mapped for rendering before decoding."""
        from ...models.videollama3 import checkpoint
        from ...processing import read_processor_files

        files = read_processor_files(checkpoint.resolve_directory(self.model_config.model))
        template = default_chat_template(checkpoint_chat_template(files, self.tokenizer))
        mapped = _mapped(template, *self._tokens)
        if mapped is None:
            logger.warning("VideoLLaMA3: the checkpoint's chat template writes images/videos neither as one "
                           "placeholder each nor in the official per-frame layout; chat requests use it as it is "
                           "(pass --chat-template to choose another)")
            return None
        logger.info("VideoLLaMA3: chat template: %s", "the checkpoint's" if mapped[1] == "checkpoint" else
                    "vl3fast's equivalent of the official per-frame template")
        return mapped[0]

    def _chat_params(self, params):
        if self._tokens is None:
            return params
        if params.chat_template is None:
            template = self._template
        else:  # given by the server or the request: mapped only when it is one of the known layouts
            mapped = _mapped(params.chat_template, *self._tokens)
            template = params.chat_template if mapped is None else mapped[0]
        return params if template is None else dataclasses.replace(params, chat_template=template)

    def render_messages(self, messages, params):
        return super().render_messages(messages, self._chat_params(params))

    async def render_messages_async(self, messages, params):
        return await super().render_messages_async(messages, self._chat_params(params))

