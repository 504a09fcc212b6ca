"""vl3fast's models.  Each model lives in its own folder (config, modules, state-dict adapter)."""
from .videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM

__all__ = ["VideoLLaMA3Config", "VideoLLaMA3ForCausalLM"]
