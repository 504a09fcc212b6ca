"""vl3fast: fast kernels, model and processing for VideoLLaMA3-style image and video understanding.

The compiled core (`vl3fast._C`) has no torch dependency; `vl3fast.ops` wraps it as torch.library
custom ops, and `vl3fast.reference` holds the pure-PyTorch semantics every kernel is tested against.
"""
from ._backend import cuda_available, cuda_status
from ._version import __version__
from .info import info
from . import ops, reference


def __getattr__(name):
    # The model needs transformers; import it only when asked for, so `import vl3fast` stays light.
    if name == "VideoLLaMA3ForCausalLM":
        from .models import VideoLLaMA3ForCausalLM

        return VideoLLaMA3ForCausalLM
    if name == "VideoLLaMA3Processor":
        from .processing import VideoLLaMA3Processor

        return VideoLLaMA3Processor
    if name in ("apply_vl3fast", "unapply_vl3fast"):
        from .integrations import transformers_apply

        return getattr(transformers_apply, name)
    raise AttributeError(f"module 'vl3fast' has no attribute {name!r}")

__all__ = ["__version__", "info", "cuda_available", "cuda_status", "ops", "reference", "VideoLLaMA3ForCausalLM", "VideoLLaMA3Processor",
           "apply_vl3fast", "unapply_vl3fast"]
