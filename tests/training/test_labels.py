"""Labels: only assistant turns are supervised, exactly as the official processor does it (spec §G):
each message tokenized alone, assistant ids [len(<|im_start|>assistant\\n) : -1] are targets."""
from __future__ import annotations

import pytest

from vl3fast.training import IGNORE_INDEX, Message, Sample, encode_sample


def expected(sample: Sample, tokenizer):
    """Token ids and labels built independently from ChatML, message by message (text-only samples)."""
    ids, labels = [], []
    for m in sample.messages:
        head = tokenizer(f"<|im_start|>{m.role}\n", add_special_tokens=False)["input_ids"]
        body = tokenizer(m.text + "<|im_end|>", add_special_tokens=False)["input_ids"]
        tail = tokenizer("\n", add_special_tokens=False)["input_ids"]
        ids += head + body + tail
        sup = m.role == "assistant"
        labels += [IGNORE_INDEX] * len(head) + (body if sup else [IGNORE_INDEX] * len(body)) + [IGNORE_INDEX] * len(tail)
    return ids, labels


def conversation(*turns) -> Sample:
    return Sample("t", tuple(Message(r, (t,)) for r, t in turns), "<test>")


@pytest.mark.parametrize("turns", [
    [("user", "Which one is brighter?"), ("assistant", "The image.")],
    [("system", "You are a helpful assistant."), ("user", "Describe the image."), ("assistant", "A picture 12.5s"),
     ("user", "Compare these two pictures."), ("assistant", "What is shown in this video?")],
])
def test_text_labels_token_by_token(processor, turns):
    sample = conversation(*turns)
    enc = encode_sample(sample, processor)
    ids, labels = expected(sample, processor.tokenizer)
    assert enc.input_ids.tolist() == ids
    assert enc.labels.tolist() == labels


def test_media_samples_supervise_only_assistant_text(encoded, samples, processor):
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for s in samples:
        enc = encoded[s.id]
        ids, labels = enc.input_ids.tolist(), enc.labels.tolist()
        targets = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
        # every target equals its input token, and the targets are exactly the assistant answers + <|im_end|>
        assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels))
        want = []
        for m in s.messages:
            if m.role == "assistant":
                want += tok(m.text, add_special_tokens=False)["input_ids"] + [im_end]
        assert targets == want, s.id
        # no visual placeholder is ever a target
        assert not set(targets) & {processor.image_token_id, processor.video_token_id}

