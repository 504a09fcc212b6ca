"""One training step (forward, backward, AdamW) on a mixed batch: vl3fast packed vs transformers padded.

    python -m benchmarks.training_step --path vl3fast|transformers --shape realistic|tiny --steps 4 --out r.json

Both paths train the same weights on the same samples (images of three sizes, two short videos, one of them
DiffFP-pruned in the data worker, and three text-only conversations):
  vl3fast       all samples packed into one row (`vl3fast.training.collate`), `model(packed=batch)`: one vision
                call, lm_head on the supervised rows only, loss = CE sum / supervised count.
  transformers  `VideoLlama3ForConditionalGeneration` on the right-padded batch (attention_mask, labels -100 on
                padding), its own loss (mean CE over the supervised tokens): how users train it today.
The realistic shape is the vision encoder at full width (1152, 16 heads, MLP 4304) with 2 layers and a Qwen2 LLM
at 1536 hidden (12/2 heads, MLP 8960, tied embeddings as in the 2B; vocabulary: see VOCAB) with 2 layers.
Each path runs in its own process so that its peak RSS is its own; the benchmark (test_training_step.py)
launches them and reports the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _records():
    from tests.training._fixtures import RECORDS

    by_id = {r["id"]: r for r in RECORDS}
    long_answer = " ".join(["The image is brighter than the video, and what is shown is a picture."] * 6)
    return [
        by_id["img"],
        {"id": "img-mid", "image": "mid.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": "What is shown in this picture is brighter. " * 3}]},
        {"id": "img-large", "image": "large.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A picture."}]},
        by_id["vid"],
        {"id": "vid2", "video": ["w.mp4"], "conversations": [
            {"from": "human", "value": "<video>\nWhat is shown in this video?"},
            {"from": "gpt", "value": "Time 1.5s: Compare these two pictures."}]},
        by_id["text"], by_id["text2"],
        {"id": "text-long", "conversations": [{"from": "human", "value": "Describe the image in detail."},
                                              {"from": "gpt", "value": long_answer}]},
    ]


def workload(root: Path, shape: str):
    """(processor, [EncodedSample]) for the benchmark batch; media written under root."""
    import numpy as np
    from PIL import Image

    from tests.processing._tokenizer import tiny_tokenizer
    from tests.training._fixtures import write_media
    from vl3fast.processing import ProcessingConfig, VideoLLaMA3Processor
    from vl3fast.training import encode_sample, parse_record

    media = root / "media"
    if not (media / "large.png").is_file():
        write_media(media)
        g = np.random.default_rng(1)
        for name, (h, w) in {"mid.png": (224, 224), "large.png": (336, 448)}.items():
            Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(media / name)
    big = shape == "realistic"
    config = ProcessingConfig(image_max_pixels=28 * 28 * (96 if big else 24), video_min_pixels=28 * 28 * 4,
                              video_max_pixels=28 * 28 * (96 if big else 48), max_frames=6)
    processor = VideoLLaMA3Processor(tiny_tokenizer(), config)
    encoded = []
    for k, record in enumerate(_records()):
        sample, problems = parse_record(record, f"benchmark:{k}")
        assert not problems, problems
        encoded.append(encode_sample(sample, processor, media))
    return processor, encoded


# Qwen2's vocabulary is 151936; cut to 32768 so that both paths fit the shared 23 GB CI machine (the padded
# baseline materialises B x L x V fp32 logits several times over: 17.6 GB peak RSS at 151936 on a 256-token image
# batch, measured and stopped on 2026-12-01).
VOCAB = 32768


def hf_config(shape: str):
    from transformers import VideoLlama3Config

    from tests.training._fixtures import IMAGE_PAD, VIDEO_PAD

    if shape == "tiny":
        from tests.training._fixtures import hf_model

        return hf_model().config
    return VideoLlama3Config(
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2, num_attention_heads=16,
                           patch_size=14),
        text_config=dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=2, num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_theta=1e6),
        image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD, tie_word_embeddings=True,
    )


def padded_batch(encoded, pad_id: int) -> dict:
    """transformers' inputs for the batch: right padding (labels -100 there), visual tensors concatenated per
    kind in sample order."""
    from tests.models.tiny_vl3 import pad_batch
    from tests.training._fixtures import hf_inputs

    return pad_batch([hf_inputs(e) for e in encoded], pad_id, side="right")


def build_models(shape: str, path: str, tmp: Path):
    """The model of `path`, loaded from one random-weight checkpoint written once under tmp (so neither path's
    process ever holds the other's model: peak RSS is its own)."""
    from transformers import VideoLlama3ForConditionalGeneration

    ckpt = tmp / f"ckpt_{shape}"
    if not (ckpt / "config.json").is_file():
        from tests.models.tiny_vl3 import randomize_

        torch.manual_seed(0)
        hf = VideoLlama3ForConditionalGeneration(hf_config(shape))
        randomize_(hf, 0)
        hf.save_pretrained(str(ckpt))
        del hf
    if path == "prepare":
        return None
    if path == "transformers":
        return VideoLlama3ForConditionalGeneration.from_pretrained(str(ckpt), attn_implementation="sdpa").float().train()
    from vl3fast.models.videollama3 import VideoLLaMA3ForCausalLM

    return VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt), pruning="after").train()


def run(path: str, shape: str, steps: int, root: Path, work=None) -> dict:
    """Times `steps` training steps after one warm-up step; returns the measurements.  work: a `workload`
    result to reuse."""
    from vl3fast.training import collate

    processor, encoded = work if work is not None else workload(root, shape)
    model = build_models(shape, path, root)
    if model is None:
        return {"path": path, "shape": shape}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    supervised = sum(e.num_supervised for e in encoded)
    tokens = sum(e.num_tokens for e in encoded)
    if path == "vl3fast":
        batch = collate(encoded)

        def step():
            loss_sum, n = model(packed=batch)
            (loss_sum / n).backward()
            return loss_sum.detach() / n
        padded_tokens = tokens
    else:
        batch = padded_batch(encoded, processor.tokenizer.pad_token_id)
        padded_tokens = int(batch["input_ids"].numel())

        def step():
            out = model(**batch)
            out.loss.backward()
            return out.loss.detach()
    seconds, cpu_seconds, losses = [], [], []
    for k in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(float(step()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k:  # the first step warms up (allocations, oneDNN primitives, Adam state)
            seconds.append(time.perf_counter() - t0)
            cpu_seconds.append(time.process_time() - c0)
    return {"path": path, "shape": shape, "step_seconds": seconds, "step_cpu_seconds": cpu_seconds,
            "tokens": tokens, "supervised_tokens": supervised,
            "padded_tokens": padded_tokens, "losses": losses, "threads": torch.get_num_threads(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=["vl3fast", "transformers", "prepare"], required=True,
                   help="prepare: write the media and the checkpoint only")
    p.add_argument("--shape", choices=["realistic", "tiny"], default="realistic")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--root", required=True, help="work folder (media, checkpoint)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    result = run(args.path, args.shape, args.steps, root)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
