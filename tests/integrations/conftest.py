"""Fixtures of the integration tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models on one intra-op thread: on a shared 2-core machine, torch's thread pool spinning on a busy
    core makes a tiny fp32 step ~40x slower than one thread (measured: 7.7 s vs 0.2 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of vl3fast's attention kernel made by the swapped vision attention (a swap that silently
    fell back to transformers' path would make none)."""
    from vl3fast.integrations import transformers_vision

    calls = []
    real = transformers_vision.rope2d_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers_vision, "rope2d_attention", counting)
    return calls
