"""`VideoLLaMA3Processor`: text + images + videos to the model-input dict of transformers' `VideoLlama3Processor`.

    proc = VideoLLaMA3Processor.from_pretrained("ckpt_dir")          # tokenizer + processor files, local only
    prompt = proc.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = proc(text=prompt, videos=["clip.mp4"], fps=1, return_tensors="pt")

Output keys (only those of the modalities given), shapes as transformers produces them:
    input_ids, attention_mask       int64 [B, L]
    pixel_values                    float32 [P_img, 3*14*14]
    image_grid_thw, image_merge_sizes            int64 [N_img, 3], [N_img]
    pixel_values_videos             float32 [P_vid, 3*14*14]
    video_grid_thw, video_merge_sizes            int64 [N_vid, 3], [N_vid]
    video_compression_mask          bool [M_vid]  (DiffFP keep mask over every merged video token)

Pixels come from `preprocess_images` / `preprocess_videos` (PyAV decoding with seeking, torchvision's resize,
bit-identical to transformers' torchvision processors). Each image placeholder becomes `t*h*w/m^2` image
tokens; each video placeholder becomes `Time {t:.1f}s:` + that frame's *kept* video tokens per frame, joined
by "," (transformers' `replace_video_token`), with the mask from `vl3fast.ops.frame_keep_mask`. Tokenization
is the checkpoint's tokenizer loaded with transformers' `AutoTokenizer`.

One deliberate difference: a video given as a *file path* is always sampled (the checkpoint's / call's fps,
num_frames, min_frames, max_frames; 1 fps by default). transformers' processor decodes every frame of a
file unless `do_sample_frames=True` or `fps`/`num_frames` is passed, and then `max_frames` never applies.
Frame arrays are used as given (as transformers does) unless `do_sample_frames=True`.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from .chat_template import DEFAULT_CHAT_TEMPLATE, default_chat_template
from .config import ProcessingConfig, resolve_config
from .preprocess import VisualInputs, preprocess_images, preprocess_videos
from .processor_files import read_processor_files
from .prompt import decoded_stamps, given_stamps, sampled_stamps, video_expansion
from .sampling import sample_with_config
from .tokens import estimate_tokens as estimate_media_tokens
from .video import DEFAULT_TIMEOUT_S, Video

TOKENIZER_KWARGS = ("padding", "truncation", "max_length", "padding_side", "add_special_tokens",
                    "return_attention_mask", "pad_to_multiple_of")


def _flatten(items, is_item) -> list:
    """Nested lists (batched inputs) flattened in order down to what `is_item` accepts."""
    if items is None:
        return []
    if is_item(items):
        return [items]
    out = []
    for x in items:
        out.extend(_flatten(x, is_item))
    return out


def _is_image(x) -> bool:
    return not isinstance(x, (list, tuple))


def _is_frame(x) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image) or (hasattr(x, "ndim") and x.ndim == 3)


def _is_video(x) -> bool:
    if isinstance(x, (str, os.PathLike, Video)) or (hasattr(x, "ndim") and x.ndim == 4):
        return True
    # a video as a list of frames (PIL images or [H, W, 3] arrays), as transformers accepts
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(_is_frame(f) for f in x)


def _frames_array(video) -> np.ndarray | torch.Tensor:
    if isinstance(video, (list, tuple)):
        return np.stack([np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f) for f in video])
    return video


def placeholder_tokens(tokenizer) -> tuple[str, str]:
    """(image_token, video_token): the attribute-or-default rule of transformers' VideoLlama3Processor.__init__."""
    return (getattr(tokenizer, "image_token", None) or "<|image_pad|>",
            getattr(tokenizer, "video_token", None) or "<|video_pad|>")


def checkpoint_chat_template(files, tokenizer) -> str | dict:
    """A checkpoint's chat template(s): its processor files' (`ProcessorFiles.chat_template`), else its
    tokenizer's, else `DEFAULT_CHAT_TEMPLATE`."""
    return files.chat_template or getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def _metadata_value(md, key):
    if md is None:
        return None
    return md.get(key) if isinstance(md, dict) else getattr(md, key, None)


class VideoLLaMA3Processor:
    """Drop-in for transformers' `VideoLlama3Processor` built on vl3fast's media processing.

    tokenizer: a transformers tokenizer holding the image and video placeholder tokens.
    config: sizes, merge sizes, sampling, normalization (`ProcessingConfig`; defaults = transformers').
    chat_template: a Jinja template string or a dict of named ones (default: `DEFAULT_CHAT_TEMPLATE`).
    use_token_compression: write only DiffFP-kept video tokens (transformers' default True).
    """

    def __init__(self, tokenizer, config: ProcessingConfig | None = None, *, chat_template: str | dict | None = None,
                 use_token_compression: bool = True, do_sample_frames: bool | None = None):
        self.tokenizer = tokenizer
        self.config = config if config is not None else ProcessingConfig()
        self.chat_template = chat_template
        self.use_token_compression = use_token_compression
        self.do_sample_frames = do_sample_frames
        self.image_token, self.video_token = placeholder_tokens(tokenizer)
        self.image_token_id = self._token_id(self.image_token)
        self.video_token_id = self._token_id(self.video_token)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if token_id is None or (unk is not None and token_id == unk and token != self.tokenizer.unk_token):
            raise ValueError(f"the tokenizer has no {token!r} token; VideoLLaMA3 prompts need it as a special token")
        return int(token_id)

    # ---- loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> "VideoLLaMA3Processor":
        """The processor of a local checkpoint directory: its tokenizer (transformers' AutoTokenizer,
        no network) and processor files (see `processor_files`); keyword overrides are ProcessingConfig
        fields or `use_token_compression` / `do_sample_frames`."""
        from transformers import AutoTokenizer

        files = read_processor_files(directory)
        try:
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(directory), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{os.fspath(directory)!r}: cannot load the tokenizer ({e})") from e
        compression = overrides.pop("use_token_compression", files.use_token_compression)
        do_sample = overrides.pop("do_sample_frames", files.do_sample_frames)
        template = checkpoint_chat_template(files, tokenizer)
        return cls(tokenizer, resolve_config(files.config, overrides), chat_template=template,
                   use_token_compression=compression, do_sample_frames=do_sample)

    # ---- chat template ---------------------------------------------------------------------------------------------
    def _template(self, chat_template: str | None) -> str:
        """transformers' `_resolve_chat_template`: a name of one of the templates, or a template string."""
        own = self.chat_template
        if chat_template is None:
            return default_chat_template(own)
        if isinstance(own, dict) and chat_template in own:
            return own[chat_template]
        return chat_template

    def apply_chat_template(self, conversation, chat_template: str | None = None, add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = False, return_dict: bool = False,
                            processor_kwargs: dict | None = None, **template_kwargs):
        """The prompt text transformers' `VideoLlama3Processor.apply_chat_template` renders (same Jinja
        renderer; template variables = the tokenizer's special tokens plus `template_kwargs`, e.g.
        `add_system_prompt=True`). One conversation gives a string, a list of conversations a list.

        tokenize=True runs the processor on the rendered text with the media named in the conversation
        (blocks {"type": "image", "image"|"url"|"path": ...} / {"type": "video", "video"|"url"|"path": ...})
        and returns `input_ids`, or the whole dict with return_dict=True; `processor_kwargs` go to `__call__`.
        """
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            from transformers.utils.chat_template_utils import _normalize_chat_messages as normalize
        except ImportError:  # private helper; without it messages are used as given
            normalize = list
        batched = isinstance(conversation, (list, tuple)) and len(conversation) > 0 and \
            isinstance(conversation[0], (list, tuple))
        conversations = [normalize(c) for c in (conversation if batched else [conversation])]
        variables = {**self.tokenizer.special_tokens_map, **template_kwargs}
        prompts, _ = render_jinja_template(conversations=conversations, chat_template=self._template(chat_template),
                                           add_generation_prompt=add_generation_prompt,
                                           continue_final_message=continue_final_message, **variables)
        if not tokenize:
            return prompts if batched else prompts[0]
        images, videos = [], []
        for conv in conversations:
            for message in conv:
                content = message.get("content")
                for block in content if isinstance(content, list) else []:
                    keys = {"image": ("image", "url", "path"), "video": ("video", "url", "path")}.get(block.get("type"))
                    for key in keys or ():
                        if key in block:
                            (images if block["type"] == "image" else videos).append(block[key])
        out = self(text=prompts, images=images or None, videos=videos or None, **(processor_kwargs or {}))
        return out if return_dict else out["input_ids"]

    # ---- processing ------------------------------------------------------------------------------------------------
    def _settings(self, settings: dict, base: ProcessingConfig | None = None) -> ProcessingConfig:
        """Per-call overrides on `base` (default: the processor's config); `fps` and `num_frames` replace
        each other, as a call to transformers' processor passes one of them."""
        settings = dict(settings)
        if settings.get("num_frames") is not None and "fps" not in settings:
            settings["fps"] = None
        if settings.get("fps") is not None and "num_frames" not in settings:
            settings["num_frames"] = None
        return resolve_config(self.config if base is None else base, settings)

    def _prepare_videos(self, videos, video_metadata, config: ProcessingConfig, do_sample_frames: bool) -> tuple:
        """Videos as `preprocess_videos` takes them, and per video a callable giving its frame labels
        from the preprocessed `VisualInputs` item (indices and fps are known only after probing files)."""
        items = _flatten(videos, _is_video)
        if video_metadata is not None:
            metadata = video_metadata if isinstance(video_metadata, (list, tuple)) else [video_metadata]
            if len(metadata) != len(items):
                raise ValueError(f"got {len(items)} videos but {len(metadata)} video_metadata entries; "
                                 "pass one per video")
        else:
            metadata = [None] * len(items)
        prepared, labelers = [], []
        for i, (video, md) in enumerate(zip(items, metadata)):
            if isinstance(video, (str, os.PathLike, Video)):
                prepared.append(video)
                labelers.append(lambda vis, k: decoded_stamps(vis.frame_indices[k], vis.video_fps[k],
                                                              vis.timestamps[k]))
                continue
            frames = _frames_array(video)
            fps = _metadata_value(md, "fps")
            indices = _metadata_value(md, "frames_indices")
            if do_sample_frames:
                if fps is None and config.num_frames is None:
                    raise ValueError(f"videos[{i}]: sampling frames by fps needs video_metadata with the video's fps "
                                     "(or pass num_frames)")
                picks = sample_with_config(int(frames.shape[0]), fps, config)
                frames = frames[torch.as_tensor(picks) if isinstance(frames, torch.Tensor) else picks]
                labelers.append(lambda vis, k, p=picks, f=fps or 1: sampled_stamps(p, f))
            else:
                # transformers' defaults for pre-decoded frames: every frame, fps 1 when unknown (it warns)
                indices = list(range(int(frames.shape[0]))) if indices is None else indices
                if len(indices) != frames.shape[0]:
                    raise ValueError(f"videos[{i}]: video_metadata frames_indices has {len(indices)} entries for "
                                     f"{frames.shape[0]} frames")
                labelers.append(lambda vis, k, p=indices, f=fps or 1: given_stamps(p, f))
            prepared.append(frames)
        return prepared, labelers

    def _video_replacements(self, vis: VisualInputs, grid, labelers) -> list[str]:
        """transformers' `replace_video_token` for every video: kept tokens per frame (``grid``: the videos'
        PackedGrid with the keep mask's counts), with time labels."""
        out = []
        for k, t in enumerate(it.t for it in grid.items):
            kept = grid.kept_per_frame[grid.frame_slice(k)]
            labels = labelers[k](vis, k)
            if len(labels) != t:
                raise ValueError(f"video {k}: {len(labels)} timestamps for {t} frames")
            out.append(video_expansion(labels, kept, self.video_token))
        return out

    def expand_placeholders(self, texts: list[str], image_reps: list[str], video_reps: list[str]) -> list[str]:
        """Each image / video placeholder replaced, in order across the batch, by its expansion."""
        for token, reps, name in ((self.image_token, image_reps, "images"), (self.video_token, video_reps, "videos")):
            found = sum(t.count(token) for t in texts)
            if found != len(reps):
                raise ValueError(f"the text has {found} {token} placeholder(s) but {len(reps)} {name} were given; "
                                 f"put one {token} where each of the {name} goes (apply_chat_template does)")
        pattern = re.compile("|".join(re.escape(t) for t in (self.image_token, self.video_token)))
        its = {self.image_token: iter(image_reps), self.video_token: iter(video_reps)}
        return [pattern.sub(lambda mt: next(its[mt.group(0)]), t) for t in texts]

    def __call__(self, text=None, images=None, videos=None, *, video_metadata=None, return_tensors: str | None = "pt",
                 max_visual_tokens: int | None = None, use_token_compression: bool | None = None,
                 do_sample_frames: bool | None = None, progress: bool | None = None, threads: int = 0,
                 timeout: float | None = DEFAULT_TIMEOUT_S, **kwargs):
        """Model inputs (transformers' `BatchFeature`) for `text` (a string or a list, with one image /
        video placeholder per item) and the images (paths, PIL images, uint8 [H, W, 3]) and videos (paths,
        `Video`s, uint8 [T, H, W, 3] arrays or lists of frames). Keyword arguments: tokenizer options
        (padding, truncation, max_length, padding_side, add_special_tokens, ...) and `ProcessingConfig`
        fields (fps, num_frames, max_frames, ...). `max_visual_tokens` fails before any pixel is decoded."""
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if text is None and images is None and videos is None:
            raise ValueError("give at least one of text, images or videos")
        tok_kwargs = {k: kwargs.pop(k) for k in TOKENIZER_KWARGS if k in kwargs}
        config = self._settings(kwargs)
        # arrays are sampled only on request, as in transformers' __call__ (files are always sampled)
        sample = bool(self.do_sample_frames if do_sample_frames is None else do_sample_frames)
        compress = self.use_token_compression if use_token_compression is None else use_token_compression

        data: dict[str, Any] = {}
        image_reps, video_reps, image_tokens = [], [], 0
        image_list = _flatten(images, _is_image)
        if image_list:
            vis = preprocess_images(image_list, config, max_visual_tokens=max_visual_tokens)
            data.update(pixel_values=vis.pixel_values, image_grid_thw=vis.grid_thw, image_merge_sizes=vis.merge_sizes)
            image_reps = [self.image_token * n for n in vis.num_tokens]
            image_tokens = sum(vis.num_tokens)
        if videos is not None:
            prepared, labelers = self._prepare_videos(videos, video_metadata, config, sample)
            # one budget over images and videos together
            budget = None if max_visual_tokens is None else max_visual_tokens - image_tokens
            vis = preprocess_videos(prepared, config, max_visual_tokens=budget, threads=threads, timeout=timeout,
                                    progress=progress)
            from .. import ops

            grid = ops.PackedGrid.from_grid(vis.grid_thw, vis.merge_sizes)
            if compress:
                mask = ops.frame_keep_mask(vis.pixel_values, grid)
            else:
                mask = torch.ones(grid.num_tokens, dtype=torch.bool)
            data.update(pixel_values_videos=vis.pixel_values, video_grid_thw=vis.grid_thw,
                        video_merge_sizes=vis.merge_sizes, video_compression_mask=mask)
            video_reps = self._video_replacements(vis, grid.with_keep(mask), labelers)

        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("text must be a string or a list of strings")
            expanded = self.expand_placeholders(texts, image_reps, video_reps)
            encoded = self.tokenizer(expanded, return_tensors=return_tensors, **tok_kwargs)
            self._check_placeholders(encoded["input_ids"], image_reps, video_reps)
            data = {**dict(encoded), **data}
        from transformers import BatchFeature

        return BatchFeature(data)

    def _check_placeholders(self, input_ids, image_reps, video_reps) -> None:
        """Truncation must not cut placeholders: the model would then see fewer slots than features."""
        ids = input_ids if isinstance(input_ids, torch.Tensor) else None  # else lists (return_tensors=None)
        for token, token_id, reps in ((self.image_token, self.image_token_id, image_reps),
                                      (self.video_token, self.video_token_id, video_reps)):
            want = sum(r.count(token) for r in reps)
            got = int((ids == token_id).sum()) if ids is not None else sum(row.count(token_id) for row in input_ids)
            if got != want:
                raise ValueError(f"the tokenized text has {got} {token} tokens but the media need {want}; "
                                 "truncation (max_length) cut placeholders, or the text contains extra ones")

    # ---- token counts without decoding pixels ---------------------------------------------------------------------
    def estimate_tokens(self, text=None, images=None, videos=None, *, config: ProcessingConfig | None = None,
                        max_visual_tokens: int | None = None, max_total_tokens: int | None = None,
                        timeout: float | None = DEFAULT_TIMEOUT_S, **settings):
        """`vl3fast.processing.estimate_tokens` plus the text: the `TokenEstimate` of the media (headers
        only) with `text_tokens` set, so `total_tokens` is the `input_ids` length `__call__` gives for the
        same text and media with every visual token kept (use_token_compression=False); with compression
        the real length is `total_tokens` minus the pruned tokens.

        text: a prompt (or list) with one placeholder per item; default: the chat-template prompt of one
        user turn holding the media, with the generation prompt. Raises TokenBudgetError past a budget.
        Frame arrays are labelled as `__call__` labels them without `video_metadata` (fps 1)."""
        import dataclasses

        from .errors import TokenBudgetError

        config = self._settings(settings, config)
        est = estimate_media_tokens(images=images, videos=videos, config=config, max_visual_tokens=max_visual_tokens,
                              timeout=timeout)
        image_reps, video_reps = [], []
        for it in est.items:
            if it.kind == "image":
                image_reps.append(self.image_token * it.tokens)
                continue
            if it.frame_indices is not None and it.video_fps:
                labels = decoded_stamps(it.frame_indices, it.video_fps, it.timestamps)
            else:
                labels = given_stamps(range(it.num_frames), 1)
            video_reps.append(video_expansion(labels, [it.tokens_per_frame] * len(labels), self.video_token))
        if text is None:
            blocks = [{"type": it.kind} for it in est.items] + [{"type": "text", "text": ""}]
            text = self.apply_chat_template([{"role": "user", "content": blocks}], add_generation_prompt=True)
        texts = [text] if isinstance(text, str) else list(text)
        ids = self.tokenizer(self.expand_placeholders(texts, image_reps, video_reps))["input_ids"]
        est = dataclasses.replace(est, text_tokens=sum(len(row) for row in ids) - est.visual_tokens)
        if max_total_tokens is not None and est.total_tokens > max_total_tokens:
            raise TokenBudgetError(f"{est.total_tokens} tokens exceed max_total_tokens={max_total_tokens}:\n"
                                   f"{est.summary()}\nLower fps or max_frames, lower the pixel limits, shorten the "
                                   "prompt, or raise the budget.")
        return est

    # ---- decoding --------------------------------------------------------------------------------------------------
    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
