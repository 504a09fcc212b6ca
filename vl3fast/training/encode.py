"""A `Sample` -> token ids, labels and visual tensors (the data worker's job), and its length without decoding.

    enc = encode_sample(sample, processor, data_folder)       # decodes media, DiffFP mask in the worker
    n = estimate_sample(sample, processor, data_folder)       # headers only: tokens (no pruning), patches

Labels follow the official processor (DAMO-NLP-SG/VideoLLaMA3 `processor.py::_process_text_with_label`,
spec videollama3.md §G): every message is rendered with the chat template on its own and tokenized; an
assistant message's ids `[g:-1]` are supervised, g being the length of the generation prompt
`<|im_start|>assistant\\n`.  So the assistant text and its `<|im_end|>` are targets; the role header, the
trailing newline and every system / user token are -100.  Labels are stored unshifted (label t is token t);
position t - 1 predicts it.

Visual items keep the tag order of the sample (images and videos may interleave), which is the order of
their placeholders in `input_ids`.  The DiffFP keep mask is computed here (`ops.frame_keep_mask`, via the
processor) and only kept video placeholders are emitted, so the length is final before packing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..ops import PackedGrid
from .data import Media, Message, Sample

IGNORE_INDEX = -100


class SampleError(ValueError):
    """A sample that cannot be trained on; the message names the sample and its file:line."""


@dataclass
class EncodedSample:
    """One sample ready for packing.  Visual tensors are in placeholder (tag) order.

    input_ids, labels   int64 [L]      labels unshifted, -100 where not supervised
    pixel_values        float32 [P, 588]
    grid_thw            int64 [N, 3]   merge_sizes int64 [N]   is_video bool [N]
    keep_mask           bool [M]       one entry per merged token of every item (images: all True)
    visual_pos          int64 [K]      positions of the K visual placeholders (K = kept tokens) in input_ids
    """

    sample_id: str
    index: int
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    merge_sizes: torch.Tensor
    is_video: torch.Tensor
    keep_mask: torch.Tensor
    visual_pos: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])

    @property
    def num_supervised(self) -> int:
        """Targets the loss sees: labels at positions 1.. (position 0 has no predecessor)."""
        return int((self.labels[1:] != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class SampleLength:
    """What the packer needs: LLM tokens and vision patches of one sample."""

    tokens: int
    patches: int


def _blocks(message: Message) -> list[dict] | str:
    if message.role != "user":
        return message.text
    return [{"type": "text", "text": c} if isinstance(c, str) else {"type": c.kind} for c in message.content]


def render_messages(sample: Sample, processor) -> list[str]:
    """Each message rendered alone with the processor's chat template (one placeholder per item)."""
    return [processor.apply_chat_template([{"role": m.role, "content": _blocks(m)}]) for m in sample.messages]


def generation_prompt_ids(processor) -> list[int]:
    """Token ids of the generation prompt (`<|im_start|>assistant\\n` in ChatML), inferred from the template as
    the official processor infers it (`_infer_generation_prompt`)."""
    probe = [{"role": "user", "content": ""}]
    full = processor.apply_chat_template(probe, add_generation_prompt=True)
    bare = processor.apply_chat_template(probe, add_generation_prompt=False)
    prompt = full.replace(bare, "")
    return processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]


# ---- videos: clip and per-video sampling -----------------------------------------------------------------------------
def video_indices(info, media: Media, config) -> np.ndarray:
    """Frame numbers sampled from one video: the clip [start, end) seconds (default: all), sampled with the
    video's own fps / max_frames where given, else the processing config's (transformers' sampler)."""
    from ..processing import sample_frame_indices

    lo = 0 if media.start is None else math.ceil(media.start * info.fps - 1e-9)
    hi = info.total_frames if media.end is None else min(info.total_frames, math.ceil(media.end * info.fps - 1e-9))
    if hi - lo < 1:
        raise SampleError(f"video {media.path!r}: the clip start={media.start} end={media.end} s holds no frame "
                          f"(the video has {info.total_frames} frames at {info.fps:g} fps)")
    fps = media.fps if media.fps is not None else config.sampling_fps
    num_frames = None if media.fps is not None else config.num_frames
    idx = sample_frame_indices(hi - lo, info.fps, fps=fps, num_frames=num_frames, min_frames=config.min_frames,
                               max_frames=media.max_frames or config.max_frames)
    return idx + lo


def _header_video(path: str, media: Media, config, timeout):
    """A `Video` whose frames array is a zero-stride stand-in of the right shape: what estimate_tokens
    needs (sizes, indices, fps) without decoding a pixel."""
    from ..processing import Video, probe_video

    info = probe_video(path, timeout=timeout)
    idx = video_indices(info, media, config)
    frames = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (len(idx), info.height, info.width, 3))
    return Video(frames=frames, indices=idx, info=info)


def _decoded_video(path: str, media: Media, config, timeout):
    from ..processing import load_video, probe_video

    info = probe_video(path, timeout=timeout)
    return load_video(path, indices=video_indices(info, media, config), timeout=timeout)


def _media_inputs(sample: Sample, data_folder, config, timeout, header_only: bool):
    images, videos = [], []
    for m in sample.media:
        path = m.resolve(data_folder)
        if m.kind == "image":
            images.append(path)
        else:
            load = _header_video if header_only else _decoded_video
            videos.append(load(path, m, config, timeout))
    return images or None, videos or None


def _named(sample: Sample, exc: Exception) -> SampleError:
    return SampleError(f"{sample.where}: sample {sample.id!r}: {exc}")


# ---- lengths (headers only) ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleEstimate:
    """Header-only measurements of a sample.  message_tokens: tokens of each message (with a processor);
    media_messages: indices of the messages holding media."""

    length: SampleLength
    visual_tokens: int
    message_tokens: tuple[int, ...] | None
    media_messages: tuple[int, ...]


def estimate_sample(sample: Sample, processor=None, data_folder=None, *, config=None,
                    timeout: float | None = 60.0) -> SampleEstimate:
    """Lengths from media headers.  With a processor, tokens = the exact `input_ids` length with every visual
    token kept (DiffFP can only shorten it), message by message; without one (then `config`, default
    ProcessingConfig()), tokens counts the visual tokens only.  patches is exact.
    Raises SampleError naming the sample (missing media, unreadable header, a clip with no frames)."""
    from ..processing import ProcessingConfig, estimate_tokens

    config = processor.config if processor is not None else (config or ProcessingConfig())
    texts = render_messages(sample, processor) if processor is not None else [None] * len(sample.messages)
    per_message, visual, patches, media_messages = [], 0, 0, []
    try:
        for k, (message, text) in enumerate(zip(sample.messages, texts)):
            items = Sample(sample.id, (message,), sample.where)
            images, videos = _media_inputs(items, data_folder, config, timeout, header_only=True)
            est = None
            if items.media:
                media_messages.append(k)
                est = (estimate_tokens(images=images, videos=videos, config=config) if processor is None else
                       processor.estimate_tokens(text=text, images=images, videos=videos))
                visual += est.visual_tokens
                patches += PackedGrid.from_items([it.grid_thw for it in est.items],
                                                 [it.merge_size for it in est.items]).num_patches
            if processor is not None:
                per_message.append(est.total_tokens if est is not None else
                                   len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]))
    except (ValueError, TypeError, OSError) as e:
        raise _named(sample, e) from e
    tokens = sum(per_message) if processor is not None else visual
    return SampleEstimate(SampleLength(tokens, patches), visual, tuple(per_message) if processor is not None else None,
                          tuple(media_messages))


def supervised_after_truncation(sample: Sample, est: SampleEstimate, gen_len: int, max_length: int | None):
    """(targets left, cuts_visual) when the sample is cut to max_length tokens, from the per-message token
    counts.  cuts_visual is True when the cut falls inside or before a message holding media (conservative:
    the exact visual positions need the decoded sample)."""
    ends = np.cumsum(est.message_tokens).tolist()
    starts = [0] + ends[:-1]
    limit = ends[-1] if max_length is None else min(max_length, ends[-1])
    left = 0
    for m, a, b in zip(sample.messages, starts, ends):
        if m.role == "assistant":  # targets are ids[a + gen_len : b - 1]; position 0 is never a target
            left += max(0, min(limit, b - 1) - max(a + gen_len, 1))
    cuts_visual = any(ends[k] > limit for k in est.media_messages)
    return left, cuts_visual


def decode_media(sample: Sample, data_folder=None, *, config=None, timeout: float | None = 60.0) -> None:
    """Fully decodes and preprocesses every media item of a sample (no tokenizer needed); SampleError if any
    will not decode."""
    from ..processing import ProcessingConfig, preprocess_images, preprocess_videos

    config = config or ProcessingConfig()
    try:
        images, videos = _media_inputs(sample, data_folder, config, timeout, header_only=False)
        if images:
            preprocess_images(images, config)
        if videos:
            preprocess_videos(videos, config, timeout=timeout)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        raise _named(sample, f"media will not decode: {e}") from e


# ---- encoding (decodes) ----------------------------------------------------------------------------------------------
def encode_sample(sample: Sample, processor, data_folder=None, *, max_length: int | None = None,
                  timeout: float | None = 60.0) -> EncodedSample:
    """Tokens, labels and visual tensors of one sample (media decoded, DiffFP mask computed here).

    max_length: truncate the sequence to this many tokens (the official `model_max_length`); a cut that
        would fall inside or before the last visual token raises (visual tokens are never truncated), as
        does a sample with no supervised token left.  Every error is a SampleError naming the sample."""
    try:
        return _encode(sample, processor, data_folder, max_length, timeout)
    except SampleError as e:
        raise e if str(e).startswith(sample.where) else _named(sample, e) from e
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        raise _named(sample, e) from e


def _encode(sample, processor, data_folder, max_length, timeout) -> EncodedSample:
    texts = render_messages(sample, processor)
    images, videos = _media_inputs(sample, data_folder, processor.config, timeout, header_only=False)
    out = processor(text=texts, images=images, videos=videos, return_tensors=None, add_special_tokens=False)
    gen = generation_prompt_ids(processor)
    ids_rows, label_rows = [], []
    for message, ids in zip(sample.messages, out["input_ids"]):
        ids = list(ids)
        labels = [IGNORE_INDEX] * len(ids)
        if message.role == "assistant":
            if ids[:len(gen)] != gen:
                raise SampleError("the chat template does not start an assistant message with the generation "
                                  f"prompt {gen}; got {ids[:len(gen)]}")
            labels[len(gen):-1] = ids[len(gen):-1]
        ids_rows.append(ids)
        label_rows.append(labels)
    input_ids = torch.tensor([t for r in ids_rows for t in r], dtype=torch.long)
    labels = torch.tensor([t for r in label_rows for t in r], dtype=torch.long)

    pixels, grids, merges, is_video, keeps = _items_in_tag_order(sample, out)
    visual_pos = ((input_ids == processor.image_token_id) | (input_ids == processor.video_token_id)).nonzero()[:, 0]
    if visual_pos.numel() != int(keeps.sum()):
        raise SampleError(f"{visual_pos.numel()} visual placeholders in the text but the media give "
                          f"{int(keeps.sum())} tokens (does the text contain placeholder tokens itself?)")
    enc = EncodedSample(sample.id, sample.index, input_ids, labels, pixels, grids, merges, is_video, keeps,
                        visual_pos)
    if max_length is not None and enc.num_tokens > max_length:
        last = int(visual_pos.max()) if visual_pos.numel() else -1
        if last >= max_length - 1:
            raise SampleError(f"truncating to max_length={max_length} would cut visual tokens (the last one is at "
                              f"position {last} of {enc.num_tokens}); visual tokens are never truncated: shorten "
                              "the text, lower fps / max_frames / pixel limits, or raise max_length")
        enc.input_ids, enc.labels = input_ids[:max_length], labels[:max_length]
    if enc.num_supervised == 0:
        raise SampleError("no supervised token" + (f" left after truncation to max_length={max_length}"
                                                   if max_length is not None else "") + ": nothing to train on")
    return enc


def _items_in_tag_order(sample: Sample, out):
    """The processor's image and video tensors re-interleaved into the sample's tag order."""
    per_kind = {}
    for kind, pv, grid, merge in (("image", "pixel_values", "image_grid_thw", "image_merge_sizes"),
                                  ("video", "pixel_values_videos", "video_grid_thw", "video_merge_sizes")):
        if pv not in out:
            per_kind[kind] = iter(())
            continue
        g, m = out[grid].long(), out[merge].long()
        packed = PackedGrid.from_grid(g, m)
        px = out[pv].split(list(packed.patches_per_item))
        mask = out["video_compression_mask"].bool().split(list(packed.tokens_per_item)) if kind == "video" else \
            [torch.ones(n, dtype=torch.bool) for n in packed.tokens_per_item]
        per_kind[kind] = iter(list(zip(px, g, m, mask)))
    items = [(m.kind, *next(per_kind[m.kind])) for m in sample.media]
    if not items:
        return (torch.zeros(0, 588), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    return (torch.cat([it[1] for it in items]), torch.stack([it[2] for it in items]),
            torch.stack([it[3] for it in items]), torch.tensor([it[0] == "video" for it in items]),
            torch.cat([it[4] for it in items]))

