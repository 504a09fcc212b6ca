"""VideoLLaMA3 (arXiv 2501.13106) on vl3fast ops: config, vision encoder, projector, model, checkpoint adapter."""
from .config import PRESETS, TextConfig, VideoLLaMA3Config, VisionConfig
from .model import VideoLLaMA3ForCausalLM, video_keep_mask
from .vision import ATTENTION_BACKENDS, DEFAULT_PRUNING, PRUNING_PLACEMENTS, VisionEncoder, downsample_blocks

__all__ = ["VideoLLaMA3Config", "VisionConfig", "TextConfig", "PRESETS", "VideoLLaMA3ForCausalLM",
           "VisionEncoder", "downsample_blocks", "video_keep_mask", "ATTENTION_BACKENDS", "PRUNING_PLACEMENTS",
           "DEFAULT_PRUNING"]
