"""The plugin refuses vLLM releases outside its tested range, naming it (no vLLM needed)."""
from __future__ import annotations

import pytest

from vl3fast.integrations.vllm import SUPPORTED_VLLM, check_vllm_version


@pytest.mark.parametrize("version", ["0.31.0", "0.31.0+cpu", "0.32.0", "0.32.0+cpu", "0.32.1"])
def test_tested_releases_pass(version):
    check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.30.0", "0.33.0", "0.33.0rc1", "1.0.0"])
def test_other_releases_are_refused_naming_the_range(version):
    with pytest.raises(RuntimeError, match=rf"supports vllm {','.join(SUPPORTED_VLLM)}; this is vllm {version}"):
        check_vllm_version(version)
