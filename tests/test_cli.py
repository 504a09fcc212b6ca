"""`vl3fast tokens` and `vl3fast chat` (in-process through `cli.main`, so no interpreter start-up per case)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("transformers")

from vl3fast.cli import main  # noqa: E402

from .processing._media import write_video  # noqa: E402
from .processing._tokenizer import save_hf_processor, tiny_tokenizer  # noqa: E402

VIDEO_SIZE = {"shortest_edge": 28 * 28 * 2, "longest_edge": 28 * 28 * 32}
IMAGE_SIZE = {"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 16}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("cli_media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (47, 83, 3), dtype=np.uint8)).save(d / "photo.png")
    (d / "notes.txt").write_text("not media\n" * 10)
    return {"image": str(d / "photo.png"), "video": write_video(d / "clip.mp4", width=96, height=64, fps=10, frames=60),
            "text": str(d / "notes.txt"), "missing": str(d / "missing.mp4")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random transformers-native VideoLLaMA3 saved with the tiny tokenizer and processor files."""
    from tests.models.tiny_vl3 import hf_config, randomize_
    from transformers import VideoLlama3ForConditionalGeneration

    d = tmp_path_factory.mktemp("cli_ckpt")
    tok = tiny_tokenizer()
    config = hf_config(72, tie=True)
    config.text_config.vocab_size = len(tok)
    config.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
    config.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
    torch.manual_seed(0)
    model = VideoLlama3ForConditionalGeneration(config).eval()
    randomize_(model, 0)
    model.save_pretrained(str(d))
    save_hf_processor(d, image_kwargs=dict(size=IMAGE_SIZE), video_kwargs=dict(size=VIDEO_SIZE, max_frames=6))
    return str(d)


def test_tokens_prints_per_file_and_total(media, capsys):
    assert main(["tokens", media["image"], media["video"], "--fps", "2", "--max-frames", "8"]) == 0
    out = capsys.readouterr().out
    assert "image photo.png: 47x83" in out and "video clip.mp4: 8 frames" in out
    from vl3fast.processing import estimate_tokens

    est = estimate_tokens(images=[media["image"]], videos=[media["video"]], fps=2.0, max_frames=8)
    assert f"total visual tokens: {est.visual_tokens}" in out


def test_tokens_with_model_counts_the_prompt(media, checkpoint, capsys):
    from vl3fast import VideoLLaMA3Processor

    assert main(["tokens", media["video"], "--model", checkpoint]) == 0
    out = capsys.readouterr().out
    proc = VideoLLaMA3Processor.from_pretrained(checkpoint)
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": ""}]}],
                                      add_generation_prompt=True)
    full = proc(text=prompt, videos=[media["video"]], use_token_compression=False)
    assert f"total tokens: {full['input_ids'].shape[1]} (before DiffFP pruning)" in out


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"), ("text", "notes.txt"), ("budget", "exceed the budget of 10"),
])
def test_tokens_errors_exit_2(media, capsys, case, message):
    args = ["tokens", media["image"], "--budget", "10"] if case == "budget" else ["tokens", media[case]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("vl3fast tokens: error:") and message in err


def _direct_greedy(checkpoint, images, videos, question, new_tokens):
    """The answer computed without the CLI: processor + model.generate, greedy."""
    from vl3fast import VideoLLaMA3ForCausalLM, VideoLLaMA3Processor

    proc = VideoLLaMA3Processor.from_pretrained(checkpoint)
    model = VideoLLaMA3ForCausalLM.from_pretrained(checkpoint)
    blocks = [{"type": "image"}] * len(images) + [{"type": "video"}] * len(videos)
    prompt = proc.apply_chat_template([{"role": "user", "content": blocks + [{"type": "text", "text": question}]}],
                                      add_generation_prompt=True)
    inputs = proc(text=prompt, images=images or None, videos=videos or None)
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    new_ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    return new_ids, proc.tokenizer.decode(new_ids, skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_chat_streams_the_greedy_answer(media, checkpoint, capsys, kind):
    from vl3fast.chat import run_chat

    question = "What is shown here?"
    images, videos = ([media["image"]], []) if kind == "image" else ([], [media["video"]])
    ids, text = _direct_greedy(checkpoint, images, videos, question, 8)
    assert len(ids) > 0
    media_args = ["--image", media["image"]] if kind == "image" else ["--video", media["video"]]
    assert main(["chat", "--model", checkpoint, *media_args, question, "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out == text + "\n"  # TextStreamer's text, flushed with a final newline
    assert "prompt tokens" in captured.err and "tokens/s" in captured.err
    result = run_chat(checkpoint, question, images=images, video=videos[0] if videos else None, max_new_tokens=8,
                      stream=False, quiet=True)
    assert result.new_token_ids == ids and result.text == text


def test_chat_errors_exit_2(media, checkpoint, tmp_path, capsys):
    assert main(["chat", "--model", checkpoint, "--video", media["missing"], "hi"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["chat", "--model", str(tmp_path / "nope"), "--image", media["image"], "hi"]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --image and --video are exclusive
        main(["chat", "--model", checkpoint, "--image", media["image"], "--video", media["video"], "hi"])
