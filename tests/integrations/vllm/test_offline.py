"""Offline `vllm.LLM` with the plugin == vl3fast's own generate, token for token (greedy, float32)."""
from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in .venv-vllm (make test-vllm)")

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


def test_official_format_same_answer(tiny, proc):
    """The official checkpoint format loads through the same weights mapper and answers identically."""
    llm = make_llm(tiny["ckpt"]["official"], tiny["media_dir"])
    try:
        case = CASES["pruned_video"]
        out = llm.generate(request(tiny, case, proc), greedy(), use_tqdm=False)[0]
        assert list(out.outputs[0].token_ids) == reference(tiny, case)["ids"]
    finally:
        del llm
