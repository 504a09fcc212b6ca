"""Offline `vllm.LLM` with the plugin == vl3fast's own generate, token for token (greedy, float32)."""
from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in .venv-vllm (make test-vllm)")

from ._chat import image_video_messages, image_video_reference  # noqa: E402
from .conftest import conversation, greedy, make_llm, vl3_reference  # noqa: E402

CASES = {
    "image": dict(images=("red",)),
    "two_images": dict(images=("red", "noise")),
    "pruned_video": dict(video="clip"),
    "unpruned_video": dict(video="clip", settings={"use_token_compression": False}),
    "text": dict(),
}


@pytest.fixture(scope="module")
def llm(tiny):
    return make_llm(tiny["ckpt"]["native"], tiny["media_dir"])


def request(tiny, case: dict, proc) -> dict:
    images = [tiny["media"][k] for k in case.get("images", ())]
    video = tiny["media"][case["video"]] if case.get("video") else None
    prompt = proc.apply_chat_template(conversation(len(images), video is not None), add_generation_prompt=True)
    mm = {}
    if images:
        mm["image"] = images
    if video:
        mm["video"] = video
    req = {"prompt": prompt}
    if mm:
        req["multi_modal_data"] = mm
    if case.get("settings"):
        req["mm_processor_kwargs"] = dict(case["settings"])
    return req


def reference(tiny, case: dict) -> dict:
    images = [tiny["media"][k] for k in case.get("images", ())]
    video = tiny["media"][case["video"]] if case.get("video") else None
    return vl3_reference(tiny["ckpt"]["native"], images, video, **case.get("settings", {}))


@pytest.fixture(scope="module")
def proc(tiny):
    from vl3fast.processing import VideoLLaMA3Processor

    return VideoLLaMA3Processor.from_pretrained(tiny["ckpt"]["native"])


def check_chat(llm, tiny) -> None:
    """`LLM.chat` renders the checkpoint's own chat template (through the plugin's renderer) to vl3fast's
    prompt, token for token, and answers as vl3fast does; `add_system_prompt` reaches the template."""
    ref = image_video_reference(tiny)
    out = llm.chat(image_video_messages(tiny), greedy(), use_tqdm=False)[0]
    assert list(out.prompt_token_ids) == ref["input_ids"]
    assert list(out.outputs[0].token_ids) == ref["ids"]
    out = llm.chat(image_video_messages(tiny), greedy(), use_tqdm=False,
                   chat_template_kwargs={"add_system_prompt": True})[0]
    assert list(out.prompt_token_ids) == ref["system_input_ids"]


def test_chat_with_the_checkpoint_template(llm, tiny):
    check_chat(llm, tiny)


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_equals_vl3fast(llm, tiny, proc, name):
    case = CASES[name]
    ref = reference(tiny, case)
    out = llm.generate(request(tiny, case, proc), greedy(), use_tqdm=False)[0]
    assert list(out.prompt_token_ids) == ref["input_ids"]  # same expansion, same kept tokens, same labels
    assert list(out.outputs[0].token_ids) == ref["ids"]


def test_pruned_video_prunes(tiny, proc):
    """The pruned case really drops tokens (the clip's right half is static)."""
    ref = reference(tiny, CASES["pruned_video"])
    mask = ref["inputs"]["video_compression_mask"]
    assert 0 < int(mask.sum()) < mask.numel()


def test_batch_of_8_equals_one_at_a_time(llm, tiny, proc):
    names = ["image", "pruned_video", "text", "two_images", "unpruned_video", "image", "text", "pruned_video"]
    reqs = [request(tiny, CASES[n], proc) for n in names]
    alone = [list(llm.generate(r, greedy(), use_tqdm=False)[0].outputs[0].token_ids) for r in reqs]
    batch = [list(o.outputs[0].token_ids) for o in llm.generate(reqs, greedy(), use_tqdm=False)]
    assert batch == alone


BAD = {
    "unknown_scheme": ("ftp://127.0.0.1/clip.mp4", {}, r"unsupported media source scheme 'ftp'"),
    "url_not_allowed": ("http://localhost:9/clip.mp4", {}, r"allowed domains"),
    "outside_media_dir": ("/etc/hostname", {}, r"allowed-local-media-path"),
    "missing": ("missing", {}, r"no such media file"),
    "fps_zero": ("clip", {"fps": 0}, r"fps must be > 0"),
    "fps_negative": ("clip", {"fps": -1.5}, r"fps must be > 0"),
    "no_frames": ("no_frames", {}, r"no frames|has no video stream"),
    "corrupt": ("corrupt", {}, r"video 0 .*(truncated|corrupt)"),
    "over_budget": ("clip", {"video_min_pixels": 28 * 28 * 200}, r"visual tokens exceed max_visual_tokens=\d+"),
    "unknown_setting": ("clip", {"fsp": 2}, r"unknown mm_processor_kwargs \['fsp'\]"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_and_the_engine_keeps_working(llm, tiny, proc, name):
    source, settings, pattern = BAD[name]
    req = request(tiny, CASES["pruned_video"], proc)
    req["multi_modal_data"]["video"] = tiny["media"].get(source, source)
    if settings:
        req["mm_processor_kwargs"] = settings
    with pytest.raises(ValueError, match=pattern):
        llm.generate(req, greedy(), use_tqdm=False)
    ok = llm.generate(request(tiny, CASES["text"], proc), greedy(), use_tqdm=False)[0]
    assert len(ok.outputs[0].token_ids) > 0


def test_more_media_than_the_limit_raises(llm, tiny, proc):
    req = request(tiny, CASES["pruned_video"], proc)
    req["prompt"] = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "video"}]}],
                                             add_generation_prompt=True)
    req["multi_modal_data"]["video"] = [tiny["media"]["clip"], tiny["media"]["short"]]
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match=r"At most 1 video"):
        llm.generate(req, greedy(), use_tqdm=False)


def test_placeholder_count_equals_keep_mask_and_cli(llm, tiny, proc):
    """Each video's placeholder count == frame_keep_mask's kept count == `vl3fast tokens --pruned`."""
    import re
    import subprocess
    import sys

    from vl3fast import ops
    from vl3fast.processing import preprocess_videos

    for name in ("clip", "short"):
        path = tiny["media"][name]
        req = request(tiny, CASES["pruned_video"], proc)
        req["multi_modal_data"]["video"] = path
        out = llm.generate(req, greedy(), use_tqdm=False)[0]
        placeholders = list(out.prompt_token_ids).count(proc.video_token_id)
        vis = preprocess_videos([path], proc.config)
        kept = int(ops.frame_keep_mask(vis.pixel_values, vis.grid_thw, vis.merge_sizes).sum())
        cli = subprocess.run([sys.executable, "-m", "vl3fast", "tokens", path, "--model", tiny["ckpt"]["native"],
                              "--pruned"], capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr
        printed = int(re.search(r": (\d+) of \d+ video tokens kept", cli.stdout).group(1))
        assert placeholders == kept == printed
