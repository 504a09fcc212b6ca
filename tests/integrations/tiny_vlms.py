"""Tiny random transformers VLMs (VideoLLaMA3, Qwen2-VL, Qwen2.5-VL, Qwen3-VL) and multimodal inputs for them.

Each model is built from its own transformers config class at realistic head dims (VideoLLaMA3 72, Qwen2-VL
64, Qwen2.5-VL 80, Qwen3-VL 72) with two vision layers, so the swapped attention runs its fast paths.
Inputs are built as the processors lay them out: one run of placeholder tokens per image (per frame for
Qwen3-VL's timestamped videos), each run between text tokens.
"""
from __future__ import annotations

import dataclasses

import torch

IMAGE_ID, VIDEO_ID, VOCAB = 120, 121, 128
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # sums to head_dim 16 / 2
FAMILIES = ("video_llama_3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def config(family: str, vision_layers: int = 2):
    import transformers as tf

    ids = dict(image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    if family == "video_llama_3":
        return tf.VideoLlama3Config(
            vision_config=dict(hidden_size=144, intermediate_size=160, num_hidden_layers=vision_layers,
                               num_attention_heads=2, patch_size=14),
            text_config=dict(model_type="qwen2", **TEXT), **ids,
        )
    qwen_ids = dict(ids, vision_start_token_id=118, vision_end_token_id=119)
    TEXT_IDS = dict(bos_token_id=1, eos_token_id=2)
    if family == "qwen2_vl":
        return tf.Qwen2VLConfig(
            vision_config=dict(depth=vision_layers, embed_dim=128, num_heads=2, mlp_ratio=2, hidden_size=64,
                               spatial_merge_size=2, patch_size=14, temporal_patch_size=2),
            text_config=dict(TEXT, rope_parameters=MROPE, **TEXT_IDS), **qwen_ids,
        )
    if family == "qwen2_5_vl":
        # window_size 56 = 2 x 2 merged tokens per window: the windowed layers really cut the images.
        return tf.Qwen2_5_VLConfig(
            vision_config=dict(depth=vision_layers, hidden_size=160, num_heads=2, intermediate_size=96,
                               out_hidden_size=64, spatial_merge_size=2, patch_size=14, temporal_patch_size=2,
                               window_size=56, fullatt_block_indexes=[vision_layers - 1]),
            text_config=dict(TEXT, rope_parameters=MROPE, **TEXT_IDS), **qwen_ids,
        )
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        moe = dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2) if family == "qwen3_vl_moe" else {}
        return (tf.Qwen3VLMoeConfig if moe else tf.Qwen3VLConfig)(
            vision_config=dict(depth=vision_layers, hidden_size=144, num_heads=2, intermediate_size=96,
                               out_hidden_size=64, spatial_merge_size=2, patch_size=16, temporal_patch_size=2,
                               num_position_embeddings=64, deepstack_visual_indexes=[0]),
            text_config=dict(TEXT, head_dim=16, rope_parameters=dict(MROPE, mrope_interleaved=True), **TEXT_IDS, **moe),
            **qwen_ids,
        )
    raise ValueError(family)


def build(family: str, seed: int = 0, vision_layers: int = 2, dtype=torch.float32):
    """A ForConditionalGeneration in train mode (dropout is 0 in all these configs), SDPA everywhere."""
    import transformers as tf

    cls = {"video_llama_3": tf.VideoLlama3ForConditionalGeneration, "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
           "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration, "qwen3_vl": tf.Qwen3VLForConditionalGeneration,
           "qwen3_vl_moe": tf.Qwen3VLMoeForConditionalGeneration}[family]
    cfg = config(family, vision_layers)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights far from the 0.02-std init, so attention is not near-uniform
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)
    return model.train()


@dataclasses.dataclass
class Sample:
    """One conversation: text tokens around media; `media` is [(kind, grid_thw)] with kind image|video."""

    media: list
    text: int = 5


# Images of several sizes (in patches), a video, spread over a batch of two.
SAMPLES = [Sample([("image", (1, 4, 6)), ("image", (1, 8, 8))]), Sample([("video", (2, 4, 4)), ("image", (1, 2, 2))])]


def _merge(family, kind):
    if family == "video_llama_3":
        return 2 if kind == "video" else 1
    return 2


def _runs(family, kind, grid):
    """Placeholder runs for one media item: Qwen3-VL separates a video's frames by timestamp text."""
    t, h, w = grid
    per_frame = h * w // _merge(family, kind) ** 2
    if family.startswith("qwen3_vl") and kind == "video":
        return [per_frame] * t
    return [t * per_frame]


def sample_tokens(family, sample: Sample, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """(input_ids, mm_token_type_ids) of one sample."""
    ids, types = [], []

    def text(n):
        ids.extend(torch.randint(0, 100, (n,), generator=gen).tolist())
        types.extend([0] * n)

    text(sample.text)
    for kind, grid in sample.media:
        for run in _runs(family, kind, grid):
            ids.extend([IMAGE_ID if kind == "image" else VIDEO_ID] * run)
            types.extend([1 if kind == "image" else 2] * run)
            text(2)
    text(sample.text)
    return ids, types


def pixel_inputs(family, model_config, samples, gen: torch.Generator) -> dict:
    """pixel_values / grids (and VideoLLaMA3's merge sizes) of the samples' media, in order."""
    vc = model_config.vision_config
    out = {}
    for kind, key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                ("video", "pixel_values_videos", "video_grid_thw")):
        grids = [grid for s in samples for k, grid in s.media if k == kind]
        if not grids:
            continue
        grid_thw = torch.tensor(grids)
        if family == "video_llama_3":
            width = 3 * vc.patch_size ** 2
            out[kind + "_merge_sizes" if kind == "image" else "video_merge_sizes"] = torch.tensor(
                [_merge(family, kind)] * len(grids))
        else:
            width = 3 * vc.temporal_patch_size * vc.patch_size ** 2
        out[key] = torch.randn(int(grid_thw.prod(1).sum()), width, generator=gen)
        out[grid_key] = grid_thw
    return out


def padded_batch(family, model_config, samples=SAMPLES, seed: int = 0) -> dict:
    """A right-padded batch with labels (-100 on padding), as a stock collator would build it."""
    gen = torch.Generator().manual_seed(seed)
    rows = [sample_tokens(family, s, gen) for s in samples]
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(len(rows), T, dtype=torch.long)
    types = torch.zeros(len(rows), T, dtype=torch.int32)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, (ids, tt) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        types[b, : len(tt)] = torch.tensor(tt)
        mask[b, : len(ids)] = 1
    labels = input_ids.masked_fill(mask == 0, -100).masked_fill(types != 0, -100)
    batch = dict(input_ids=input_ids, attention_mask=mask, labels=labels, **pixel_inputs(family, model_config, samples, gen))
    if family != "video_llama_3":
        batch["mm_token_type_ids"] = types
    return batch


def packed_batch(padded: dict) -> dict:
    """The same samples end to end in one row: no attention mask, position_ids restarting per sample."""
    keep = padded["attention_mask"].bool()
    packed = {k: v for k, v in padded.items() if k not in ("input_ids", "attention_mask", "labels", "mm_token_type_ids")}
    packed["input_ids"] = padded["input_ids"][keep][None]
    labels = padded["labels"].clone()
    labels[:, 0] = -100  # a sample's first token has no predecessor in the packed row either
    packed["labels"] = labels[keep][None]
    packed["position_ids"] = (keep.long().cumsum(1) - 1)[keep][None]
    if "mm_token_type_ids" in padded:
        packed["mm_token_type_ids"] = padded["mm_token_type_ids"][keep][None]
    return packed


class SampleDataset(torch.utils.data.Dataset):
    """Samples for transformers.Trainer: each item is (index, Sample); the collators build the tensors."""

    def __init__(self, samples):
        self.samples = list(samples)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return i, self.samples[i]


def trainer_samples(n: int = 10) -> list:
    """Varied conversations: one or two images of different sizes, a video, text only."""
    kinds = [[("image", (1, 4, 6))], [("image", (1, 8, 8)), ("image", (1, 2, 4))], [("video", (2, 4, 4))],
             [], [("image", (1, 6, 2))]]
    return [Sample(kinds[i % len(kinds)], text=3 + i % 4) for i in range(n)]


class PaddedCollator:
    """What a stock run feeds transformers: a right-padded batch with an attention mask."""

    def __init__(self, family, model_config):
        self.family, self.config = family, model_config

    def __call__(self, items):
        seed = sum(i * 7919 for i, _ in items)  # the same pixels and tokens for a sample set, whatever collates it
        return padded_batch(self.family, self.config, [s for _, s in items], seed=seed)


class PackedCollator(PaddedCollator):
    """The same samples as one packed row (position_ids restarting per sample, no attention mask)."""

    def __call__(self, items):
        return packed_batch(super().__call__(items))


def encoded_videollama3(model_config, sample: Sample, index: int):
    """A vl3fast.training EncodedSample for a tiny VideoLLaMA3, as the data worker emits it: each video pruned
    by a keep mask (>= 1 token per frame) and only the kept placeholders in input_ids."""
    from vl3fast.training.encode import EncodedSample

    gen = torch.Generator().manual_seed(1000 + index)
    width = 3 * model_config.vision_config.patch_size ** 2
    ids, keep, pixels, grids, merges, is_video = [], [], [], [], [], []

    def text(n):
        ids.extend(torch.randint(0, 100, (n,), generator=gen).tolist())

    text(sample.text)
    for kind, (t, h, w) in sample.media:
        m = _merge("video_llama_3", kind)
        per_frame = (h // m) * (w // m)
        mask = torch.rand(t, per_frame, generator=gen) < 0.6 if kind == "video" else torch.ones(t, per_frame, dtype=torch.bool)
        mask[:, 0] = True
        keep.append(mask.reshape(-1))
        ids.extend([VIDEO_ID if kind == "video" else IMAGE_ID] * int(mask.sum()))
        text(2)
        pixels.append(torch.randn(t * h * w, width, generator=gen))
        grids.append((t, h, w)), merges.append(m), is_video.append(kind == "video")
    text(sample.text)
    input_ids = torch.tensor(ids)
    visual = (input_ids == IMAGE_ID) | (input_ids == VIDEO_ID)
    n = len(grids)
    return EncodedSample(
        sample_id=f"s{index}", index=index, input_ids=input_ids, labels=input_ids.masked_fill(visual, -100),
        pixel_values=torch.cat(pixels) if pixels else torch.zeros(0, width),
        grid_thw=torch.tensor(grids, dtype=torch.long).reshape(n, 3), merge_sizes=torch.tensor(merges, dtype=torch.long),
        is_video=torch.tensor(is_video, dtype=torch.bool), keep_mask=torch.cat(keep) if keep else torch.zeros(0, dtype=torch.bool),
        visual_pos=visual.nonzero().squeeze(1),
    )


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, model_config, samples):
        self.items = [encoded_videollama3(model_config, s, i) for i, s in enumerate(samples)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def padded_videollama3(encoded) -> dict:
    """The stock run's batch of EncodedSamples: right-padded rows, images and videos apart, as transformers'
    VideoLLaMA3 processor and a padding collator lay them out."""
    T = max(e.num_tokens for e in encoded)
    input_ids = torch.zeros(len(encoded), T, dtype=torch.long)
    labels = torch.full((len(encoded), T), -100, dtype=torch.long)
    mask = torch.zeros(len(encoded), T, dtype=torch.long)
    for b, e in enumerate(encoded):
        input_ids[b, : e.num_tokens], labels[b, : e.num_tokens], mask[b, : e.num_tokens] = e.input_ids, e.labels, 1
    batch = dict(input_ids=input_ids, labels=labels, attention_mask=mask)
    for video, prefix, key in ((False, "image", "pixel_values"), (True, "video", "pixel_values_videos")):
        pixels, grids, merges, keeps = [], [], [], []
        for e in encoded:
            rows = e.grid_thw.prod(1).tolist()
            tokens = (e.grid_thw[:, 0] * (e.grid_thw[:, 1] // e.merge_sizes) * (e.grid_thw[:, 2] // e.merge_sizes)).tolist()
            for i, (p, k) in enumerate(zip(e.pixel_values.split(rows), e.keep_mask.split(tokens))):
                if bool(e.is_video[i]) == video:
                    pixels.append(p), grids.append(e.grid_thw[i]), merges.append(e.merge_sizes[i]), keeps.append(k)
        if pixels:
            batch[key], batch[f"{prefix}_grid_thw"] = torch.cat(pixels), torch.stack(grids)
            batch[f"{prefix}_merge_sizes"] = torch.stack(merges)
            if video:
                batch["video_compression_mask"] = torch.cat(keeps)
    return batch
