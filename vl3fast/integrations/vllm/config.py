"""The checkpoint configs vLLM reads, and vl3fast's view of them.

vLLM loads config.json with transformers' AutoConfig. transformers knows the native format
(`video_llama_3`, `VideoLlama3Config`); the official format (`videollama3_qwen2`) ships its config class as
remote code, so the plugin registers a plain one here: the Qwen2 fields at top level (so vLLM's Qwen2
reads them as they are) plus the vision settings, which vl3fast's `VideoLLaMA3Config` parses.
"""
from __future__ import annotations

from ...models.videollama3.config import OFFICIAL_MODEL_TYPE, VideoLLaMA3Config


def _official_config_class():
    from transformers import Qwen2Config

    class Videollama3Qwen2Config(Qwen2Config):
        """DAMO-NLP-SG/VideoLLaMA3's config: a Qwen2 config with `vision_encoder_config`,
        `mm_projector_type`, `use_token_compression` and `image_token_index` beside it."""

        model_type = OFFICIAL_MODEL_TYPE

    return Videollama3Qwen2Config


def register_official_config() -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.register(OFFICIAL_MODEL_TYPE, _official_config_class(), exist_ok=True)
    except ValueError:  # already registered in this process under another class: keep that one
        pass


def vl3_config(hf_config) -> VideoLLaMA3Config:
    """vl3fast's config (vision, text, token ids, format) from the transformers config vLLM loaded."""
    return VideoLLaMA3Config.from_dict(hf_config.to_dict())


def text_config(hf_config):
    """The Qwen2 config of the LLM: `text_config` (native) or the config itself (official)."""
    return hf_config.get_text_config()
