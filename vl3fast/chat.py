"""One question about images or a video, answered by a local VideoLLaMA3 checkpoint, streaming text.

    result = run_chat("ckpt_dir", "What happens here?", video="clip.mp4", max_new_tokens=128)

Loads `VideoLLaMA3Processor` and `VideoLLaMA3ForCausalLM` from the directory, renders the chat template
(one user turn: the media, then the question; the generation prompt), processes the media, and runs
greedy decoding (transformers' generate) with a `TextStreamer` so text appears as it is generated.
Status lines (loading, prompt size, speed) go to stderr, the answer to stdout.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from ._backend import cuda_available


@dataclass
class ChatResult:
    text: str                 # the answer, special tokens removed
    new_token_ids: list[int]  # generated ids (prompt excluded)
    prompt_tokens: int        # input_ids length, after DiffFP pruning of video tokens
    seconds: float            # generation time (prefill + decoding)


def _status(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def resolve_device_dtype(device: str | None, dtype: str | None) -> tuple[str, torch.dtype | str, str]:
    """(device, dtype, how it was chosen) for a chat run.

    device: None -> "cuda" when vl3fast's CUDA kernels can run here (`vl3fast.cuda_available`: built with
    them and a device visible; torch seeing a GPU is not enough for a CPU-only build), else "cpu".
    dtype: None -> bfloat16 on CUDA (the tensor-core attention and half the memory; float32 runs there too,
    on the simple kernel) and float32 on the CPU; "auto" -> the checkpoint's; otherwise a torch dtype name.
    """
    device = device or ("cuda" if cuda_available() else "cpu")
    if dtype is None:
        on_cuda = torch.device(device).type == "cuda"
        chosen = torch.bfloat16 if on_cuda else torch.float32
        return device, chosen, (f"dtype {str(chosen).removeprefix('torch.')} (the default on "
                                f"{'CUDA' if on_cuda else 'the CPU'}; --dtype to change)")
    if dtype == "auto":
        return device, "auto", "dtype auto (the checkpoint's)"
    chosen = getattr(torch, dtype, None)
    if not isinstance(chosen, torch.dtype) or not chosen.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return device, chosen, f"dtype {dtype} (--dtype)"


def run_chat(model_dir: str, question: str, *, images=(), video=None, max_new_tokens: int = 256,
             fps: float | None = None, max_frames: int | None = None, device: str | None = None,
             dtype: str | None = None, system_prompt: bool = False, stream: bool = True,
             quiet: bool = False) -> ChatResult:
    """Answers `question` about `images` (paths) or one `video` (path) with greedy decoding.

    stream=True prints the answer to stdout token by token (transformers' TextStreamer).
    fps / max_frames override the checkpoint's video sampling; device and dtype: resolve_device_dtype
    (defaults: CUDA when available, bfloat16 there and float32 on the CPU); the choice is printed.
    """
    from transformers import TextStreamer

    from .models import VideoLLaMA3ForCausalLM
    from .processing import VideoLLaMA3Processor

    images = list(images or ())
    if bool(images) == (video is not None):
        raise ValueError("give images or one video (not both, not neither)")
    device, torch_dtype, dtype_note = resolve_device_dtype(device, dtype)
    _status(f"device {device}, {dtype_note}", quiet)

    t0 = time.perf_counter()
    processor = VideoLLaMA3Processor.from_pretrained(model_dir)
    model = VideoLLaMA3ForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, device=device)
    _status(f"loaded {model_dir} on {device} in {time.perf_counter() - t0:.1f} s", quiet)

    blocks = [{"type": "image"} for _ in images] + ([{"type": "video"}] if video is not None else [])
    conversation = [{"role": "user", "content": blocks + [{"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, add_system_prompt=system_prompt)
    settings = {k: v for k, v in (("fps", fps), ("max_frames", max_frames)) if v is not None}
    t0 = time.perf_counter()
    # a tqdm bar over decoded frames appears on a terminal for long videos (load_video's progress=None)
    inputs = processor(text=prompt, images=images or None, videos=[video] if video is not None else None,
                       return_tensors="pt", **settings)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    detail = ""
    if "video_compression_mask" in inputs:
        mask = inputs["video_compression_mask"]
        detail = (f", {int(inputs['video_grid_thw'][0, 0])} frames, {int(mask.sum())}/{mask.numel()} video tokens "
                  "kept by DiffFP")
    _status(f"processed media in {time.perf_counter() - t0:.1f} s: {prompt_tokens} prompt tokens{detail}", quiet)

    inputs = inputs.to(device)
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs:
            inputs[key] = inputs[key].to(model.dtype)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id
    t0 = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                         pad_token_id=pad_id)
    seconds = time.perf_counter() - t0
    new_ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    _status(f"generated {len(new_ids)} tokens in {seconds:.2f} s ({len(new_ids) / max(seconds, 1e-9):.1f} tokens/s)",
            quiet)
    text = processor.tokenizer.decode(new_ids, skip_special_tokens=True)
    return ChatResult(text=text, new_token_ids=new_ids, prompt_tokens=prompt_tokens, seconds=seconds)
