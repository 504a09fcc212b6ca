"""VideoLLaMA3Processor against transformers' VideoLlama3Processor, both loaded from one saved checkpoint dir."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vl3fast import VideoLLaMA3Processor
from vl3fast.processing import TokenBudgetError, read_processor_files

from ._media import hf_load_video, write_video
from ._tokenizer import save_hf_processor, tiny_tokenizer

# small pixel limits keep the tensors small; max_frames=12 so the 400-frame fixture is capped
IMAGE_SIZE = {"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 24}
VIDEO_SIZE = {"shortest_edge": 28 * 28 * 2, "longest_edge": 28 * 28 * 64}
MAX_FRAMES = 12


def static_half(i: int, height: int, width: int) -> np.ndarray:
    """Left half identical in every frame, right half moving: DiffFP prunes the left half's tokens."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 5 + yy * 3) % 256
    img[..., 1] = np.where(xx < width // 2, 90, (yy * 4 + 37 * i) % 256)
    img[..., 2] = np.where(xx < width // 2, 200, (xx * 7 + 53 * i) % 256)
    return img


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("proc_ckpt")
    save_hf_processor(d, image_kwargs=dict(size=IMAGE_SIZE), video_kwargs=dict(size=VIDEO_SIZE, max_frames=MAX_FRAMES))
    return str(d)


@pytest.fixture(scope="module")
def procs(ckpt):
    from transformers import VideoLlama3Processor

    return VideoLlama3Processor.from_pretrained(ckpt), VideoLLaMA3Processor.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def static_video(media_dir):
    # lossless-ish: a low-QP encode keeps the static half bit-identical across frames after decoding
    return write_video(media_dir / "static_half.mp4", width=112, height=64, fps=8, frames=48, gop=8,
                       pattern=static_half)


def assert_same(hf_out, ours) -> None:
    assert sorted(hf_out.keys()) == sorted(ours.keys())
    for key in hf_out:
        a, b = hf_out[key], ours[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=key)
        else:
            assert torch.equal(a, b), key


def user(*blocks, text="What is shown here?"):
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": text}]}]


def test_from_pretrained_reads_the_saved_settings(ckpt, procs):
    _, ours = procs
    files = read_processor_files(ckpt)
    assert "processor_config.json" in files.sources and "chat_template.jinja" in files.sources
    c = ours.config
    assert (c.image_min_pixels, c.image_max_pixels) == (IMAGE_SIZE["shortest_edge"], IMAGE_SIZE["longest_edge"])
    assert (c.video_min_pixels, c.video_max_pixels) == (VIDEO_SIZE["shortest_edge"], VIDEO_SIZE["longest_edge"])
    assert (c.max_frames, c.image_merge_size, c.video_merge_size) == (MAX_FRAMES, 1, 2)
    assert ours.use_token_compression is True and (ours.image_token_id, ours.video_token_id) == (5, 6)


@pytest.mark.parametrize("conversation", [
    user({"type": "image"}, {"type": "image"}, text="Compare these two pictures."),
    user({"type": "video"}),
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, *user({"type": "image"})],
], ids=["two_images", "video", "multi_turn"])
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_text_matches(procs, conversation, gen):
    hf, ours = procs
    assert ours.apply_chat_template(conversation, add_generation_prompt=gen) == \
        hf.apply_chat_template(conversation, add_generation_prompt=gen)
    batch = [conversation, user({"type": "image"})]
    assert ours.apply_chat_template(batch, add_generation_prompt=gen) == \
        hf.apply_chat_template(batch, add_generation_prompt=gen)


def test_multi_image_prompt_matches(procs):
    from PIL import Image

    hf, ours = procs
    rng = np.random.default_rng(0)
    # odd sizes; one thin enough for the min-pixels path, one large enough for the max-pixels path
    sizes = [(37, 53), (5, 9), (1, 150), (301, 217)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    # PIL for the tiny ones: transformers reads a [1, 150, 3] array as channels-first (its ambiguity rule)
    images[1], images[2] = Image.fromarray(images[1]), Image.fromarray(images[2])
    prompt = hf.apply_chat_template(user(*[{"type": "image"}] * 4), add_generation_prompt=True)
    out = ours(text=prompt, images=images)
    assert_same(hf(text=prompt, images=images, return_tensors="pt"), out)
    assert int((out["input_ids"] == ours.image_token_id).sum()) == sum(
        int(g.prod()) for g in out["image_grid_thw"])


@pytest.mark.parametrize("name,fps", [("static", 2.0), ("h264_bframes", 1.0), ("ntsc_29_97", 2.0),
                                      ("long_max_frames", 1.0)])
def test_video_file_matches(procs, videos, static_video, name, fps):
    hf, ours = procs
    path = static_video if name == "static" else videos[name]
    prompt = hf.apply_chat_template(user({"type": "video"}), add_generation_prompt=True)
    # transformers decodes with its own PyAV loader and sample_frames (its default loader is torchcodec)
    frames, md = hf_load_video(path, hf.video_processor, fps=fps)
    expected = hf(text=prompt, videos=[frames], video_metadata=[md], return_tensors="pt")
    out = ours(text=prompt, videos=[path], fps=fps)
    assert_same(expected, out)
    mask = out["video_compression_mask"]
    assert int((out["input_ids"] == ours.video_token_id).sum()) == int(mask.sum())
    if name == "static":
        assert not mask.all(), "the static half must be pruned, so only kept placeholders are written"
        assert ours.tokenizer.decode(out["input_ids"][0]).count("Time ") == out["video_grid_thw"][0, 0]
    if name == "long_max_frames":
        assert out["video_grid_thw"][0, 0] == MAX_FRAMES


def test_frame_arrays_match(procs):
    hf, ours = procs
    video = np.stack([static_half(i, 50, 70) for i in range(9)])
    prompt = hf.apply_chat_template(user({"type": "video"}, {"type": "video"}), add_generation_prompt=True)
    # no metadata: fps 1, every frame
    single = hf.apply_chat_template(user({"type": "video"}), add_generation_prompt=True)
    assert_same(hf(text=single, videos=[video], return_tensors="pt"), ours(text=single, videos=[video]))
    # fps unknown (1 is assumed); known fps and frame numbers label the frames
    md = [{"total_num_frames": 9, "fps": None, "frames_indices": list(range(9))},
          {"total_num_frames": 30, "fps": 2.5, "frames_indices": [0, 3, 7, 11, 14, 18, 21, 25, 29]}]
    expected = hf(text=prompt, videos=[video, video[::-1].copy()], video_metadata=md, return_tensors="pt")
    assert_same(expected, ours(text=prompt, videos=[video, video[::-1].copy()], video_metadata=md))
    assert "Time 11.6s:" in ours.tokenizer.decode(expected["input_ids"][0])
    # frame sampling of arrays (do_sample_frames with the metadata's fps)
    long = np.stack([static_half(i, 40, 60) for i in range(40)])
    meta = [{"total_num_frames": 40, "fps": 10.0}]
    one = hf.apply_chat_template(user({"type": "video"}), add_generation_prompt=True)
    expected = hf(text=one, videos=[long], video_metadata=meta, do_sample_frames=True, fps=2, return_tensors="pt")
    assert_same(expected, ours(text=one, videos=[long], video_metadata=meta, do_sample_frames=True, fps=2))


def test_batch_with_images_and_videos_padded(procs, videos):
    hf, ours = procs
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((33, 47), (60, 20))]
    frames, md = hf_load_video(videos["h264_gop250"], hf.video_processor, fps=1.0)
    texts = hf.apply_chat_template([user({"type": "image"}, {"type": "video"}), user({"type": "image"}, text="Hm?")],
                                   add_generation_prompt=True)
    expected = hf(text=texts, images=images, videos=[frames], video_metadata=[md], padding=True, return_tensors="pt")
    out = ours(text=texts, images=images, videos=[videos["h264_gop250"]], fps=1.0, padding=True)
    assert_same(expected, out)
    assert out["attention_mask"][1].sum() < out["attention_mask"].shape[1]  # the short prompt was padded


def test_estimate_total_equals_input_ids(procs, videos, static_video):
    _, ours = procs
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    prompt = ours.apply_chat_template(user({"type": "image"}, {"type": "video"}), add_generation_prompt=True)
    for path in (videos["ntsc_29_97"], static_video):
        est = ours.estimate_tokens(text=prompt, images=[image], videos=[path], fps=2.0)
        full = ours(text=prompt, images=[image], videos=[path], fps=2.0, use_token_compression=False)
        assert est.total_tokens == full["input_ids"].shape[1]
        pruned = ours(text=prompt, images=[image], videos=[path], fps=2.0)
        mask = pruned["video_compression_mask"]
        assert est.total_tokens - int((~mask).sum()) == pruned["input_ids"].shape[1]
    # without a prompt: the chat template's one-turn prompt around the media
    est = ours.estimate_tokens(images=[image])
    expected = ours(text=ours.apply_chat_template(user({"type": "image"}, text=""), add_generation_prompt=True),
                    images=[image])
    assert est.total_tokens == expected["input_ids"].shape[1] and est.text_tokens > 0
    with pytest.raises(TokenBudgetError, match="max_total_tokens=10"):
        ours.estimate_tokens(images=[image], max_total_tokens=10)


def test_vfr_video_labels_are_the_frames_times(procs, clips):
    """On a variable-frame-rate file the prompt's `Time t.ts:` labels are the frames' pts (index / fps said
    7.8 s for the frame at 7.0 s), and the token estimate reads the same times without decoding."""
    _, ours = procs
    prompt = ours.apply_chat_template(user({"type": "video"}), add_generation_prompt=True)
    out = ours(text=prompt, videos=[clips["vfr"]], num_frames=6, use_token_compression=False)
    text = ours.tokenizer.decode(out["input_ids"][0])
    assert [f"Time {t}s:" in text for t in ("0.0", "0.5", "1.0", "1.5", "2.0", "7.0")] == [True] * 6
    assert "Time 7.8s:" not in text
    est = ours.estimate_tokens(text=prompt, videos=[clips["vfr"]], num_frames=6)
    assert est.total_tokens == out["input_ids"].shape[1]
    assert list(est.items[0].timestamps) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 7.0], abs=1e-9)


def test_apply_chat_template_tokenize(procs, videos):
    _, ours = procs
    conv = user({"type": "video", "path": videos["h264_bframes"]})
    ids = ours.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, processor_kwargs={"fps": 1.0})
    direct = ours(text=ours.apply_chat_template(conv, add_generation_prompt=True), videos=[videos["h264_bframes"]],
                  fps=1.0)
    assert torch.equal(ids, direct["input_ids"])


def test_errors(procs, ckpt, tmp_path):
    _, ours = procs
    image = np.zeros((30, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholder\\(s\\) but 2 images"):
        ours(text="<|image_pad|>", images=[image, image])
    with pytest.raises(ValueError, match="placeholder\\(s\\) but 0 videos"):
        ours(text="<|video_pad|>")
    with pytest.raises(ValueError, match="truncation"):
        ours(text="hi <|image_pad|>", images=[image], truncation=True, max_length=3)
    with pytest.raises(ValueError, match="return_tensors"):
        ours(text="hi", return_tensors="np")
    with pytest.raises(ValueError, match="video_metadata"):
        ours(text="<|video_pad|>", videos=[np.zeros((4, 28, 28, 3), np.uint8)], video_metadata=[{}, {}])
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(ValueError, match="has no '<\\|image_pad\\|>' token"):
        VideoLLaMA3Processor(PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE())))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        VideoLLaMA3Processor.from_pretrained(str(tmp_path / "missing"))
    # a setting vl3fast cannot reproduce is refused by name
    cfg = json.loads(open(f"{ckpt}/processor_config.json").read())
    cfg["image_processor"]["resample"] = 2
    (tmp_path / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="resample=2"):
        read_processor_files(tmp_path)
    (tmp_path / "processor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_processor_files(tmp_path)


def test_from_pretrained_legacy_layout_and_defaults(ckpt, procs, tmp_path):
    """transformers 4.x files (preprocessor_config.json + video_preprocessor_config.json) give the same
    settings; a directory with only a tokenizer gets transformers' defaults and the built-in template."""
    _, ours = procs
    nested = json.loads(open(f"{ckpt}/processor_config.json").read())
    legacy = tmp_path / "legacy"
    ours.tokenizer.save_pretrained(str(legacy))
    (legacy / "preprocessor_config.json").write_text(json.dumps(nested["image_processor"]))
    (legacy / "video_preprocessor_config.json").write_text(json.dumps(nested["video_processor"]))
    assert VideoLLaMA3Processor.from_pretrained(str(legacy)).config == ours.config

    bare = tmp_path / "bare"
    tiny_tokenizer().save_pretrained(str(bare))  # (ours.tokenizer carries the checkpoint's chat template)
    proc = VideoLLaMA3Processor.from_pretrained(str(bare))
    assert proc.config == type(ours.config)()
    text = proc.apply_chat_template(user({"type": "video"}, text="Hi"), add_generation_prompt=True,
                                    add_system_prompt=True)
    assert text == ("<|im_start|>system\nYou are VideoLLaMA3 created by Alibaba DAMO Academy, a helpful assistant to "
                    "help people understand images and videos.<|im_end|>\n<|im_start|>user\n<|video_pad|>\nHi"
                    "<|im_end|>\n<|im_start|>assistant\n")
