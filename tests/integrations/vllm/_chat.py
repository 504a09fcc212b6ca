"""Chat requests with an image and a video, and what vl3fast alone makes of them (offline and served tests)."""
from __future__ import annotations

from pathlib import Path

from .conftest import QUESTION, conversation, vl3_reference


def file_url(path: str) -> str:
    return Path(path).absolute().as_uri()


def image_video_messages(tiny, question: str = QUESTION) -> list[dict]:
    """An OpenAI chat message: an image, a video, a question (the order of `conftest.conversation`)."""
    media = tiny["media"]
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": file_url(media["red"])}},
                                         {"type": "video_url", "video_url": {"url": file_url(media["clip"])}},
                                         {"type": "text", "text": question}]}]


def image_video_reference(tiny) -> dict:
    """vl3fast's prompt ids and greedy answer for `image_video_messages` (transformers-native checkpoint, same
    weights as the official one), plus the prompt ids with the official system prompt (`add_system_prompt`)."""
    from vl3fast.processing import VideoLLaMA3Processor

    ckpt, media = tiny["ckpt"]["native"], tiny["media"]
    ref = vl3_reference(ckpt, images=[media["red"]], video=media["clip"])
    proc = VideoLLaMA3Processor.from_pretrained(ckpt)
    ref["text"] = proc.tokenizer.decode(ref["ids"], skip_special_tokens=True)
    system = proc.apply_chat_template(conversation(1, True), add_generation_prompt=True, add_system_prompt=True)
    ref["system_input_ids"] = proc(text=system, images=[media["red"]], videos=[media["clip"]])["input_ids"][0].tolist()
    return ref
