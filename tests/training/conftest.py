"""Fixtures for the training tests: media and annotations on disk, the tiny processor, encoded samples,
a transformers model and vl3fast's model on the same random weights."""
from __future__ import annotations

import pytest

pytest.importorskip("av")
pytest.importorskip("PIL")

from ._fixtures import hf_model, tiny_processor, vl3_from_hf, write_annotations, write_media  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    write_media(root / "media")
    write_annotations(root / "train.jsonl")
    return root


@pytest.fixture(scope="session")
def processor():
    return tiny_processor()


@pytest.fixture(scope="session")
def samples(data_dir):
    from vl3fast.training import load_annotations

    samples, problems = load_annotations(data_dir / "train.jsonl")
    assert problems == []
    return samples


@pytest.fixture(scope="session")
def encoded(samples, processor, data_dir):
    from vl3fast.training import encode_sample

    return {s.id: encode_sample(s, processor, data_dir / "media") for s in samples}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """A transformers-native checkpoint of the tiny model, with the tiny processor saved beside it."""
    from tests.processing._tokenizer import save_hf_processor

    d = tmp_path_factory.mktemp("train_ckpt")
    hf = hf_model()
    hf.save_pretrained(str(d))
    save_hf_processor(d, image_kwargs=dict(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 24}),
                      video_kwargs=dict(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 48}))
    return d


@pytest.fixture
def models(tmp_path):
    """(transformers model, vl3fast model) on identical random weights, in train mode, fp32."""
    hf = hf_model()
    ours = vl3_from_hf(hf, tmp_path / "ckpt")
    return hf.train(), ours.train()
