"""Checkpoint safety: no pickle payload runs, damaged files are named, an index cannot leave its folder, config
values are type- and range-checked, non-float weights are refused, and save_pretrained is atomic."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from vl3fast.models.videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM
from vl3fast.models.videollama3.checkpoint import SAFE_FILE, SAFE_INDEX, CheckpointError

from .tiny_vl3 import build_hf_model


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt_safety") / "native"
    build_hf_model(72, True).save_pretrained(str(path))
    return str(path)


def _copy(native_dir, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(native_dir, dst)
    return dst


def _edit_config(path, edit):
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


# ---- loading ---------------------------------------------------------------------------------------------------
def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "bin"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(VideoLLaMA3Config.from_name("tiny").to_dict("native")))
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad_header_length"])
def test_damaged_safetensors_is_named(native_dir, tmp_path, damage):
    ckpt = _copy(native_dir, tmp_path)
    weights = ckpt / SAFE_FILE
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b"",
                         "bad_header_length": (2**40).to_bytes(8, "little") + data[8:]}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_cannot_escape_the_folder(native_dir, tmp_path, shard):
    ckpt = _copy(native_dir, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((ckpt / SAFE_FILE).read_bytes())
    (ckpt / SAFE_FILE).unlink()
    (ckpt / SAFE_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {"a": shard}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt))


def test_index_symlink_out_of_the_folder_is_refused(native_dir, tmp_path):
    ckpt = _copy(native_dir, tmp_path)
    os.rename(ckpt / SAFE_FILE, tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", ckpt / "model-00001-of-00001.safetensors")
    (ckpt / SAFE_INDEX).write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt))


def test_malformed_index_is_named(native_dir, tmp_path):
    ckpt = _copy(native_dir, tmp_path)
    (ckpt / SAFE_INDEX).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a valid weight index"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt))


def test_int_weights_are_refused(native_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = _copy(native_dir, tmp_path)
    tensors = load_file(str(ckpt / SAFE_FILE))
    name = next(iter(tensors))
    tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, str(ckpt / SAFE_FILE))
    with pytest.raises(CheckpointError, match=r"dtype I32"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt))


_BAD_CONFIGS = [
    ("tie_word_embeddings", lambda c: c.update(tie_word_embeddings="yes"), TypeError),
    ("text_config.tie_word_embeddings", lambda c: c["text_config"].update(tie_word_embeddings=1), TypeError),
    ("vision_config.num_attention_heads", lambda c: c["vision_config"].update(num_attention_heads=-2), ValueError),
    ("vision_config.num_attention_heads", lambda c: c["vision_config"].update(num_attention_heads=0), ValueError),
    ("text_config.num_attention_heads", lambda c: c["text_config"].update(num_attention_heads=0), ValueError),
    ("text_config.num_attention_heads", lambda c: c["text_config"].update(num_key_value_heads=3), ValueError),
    ("text_config.hidden_size", lambda c: c["text_config"].update(hidden_size="64"), TypeError),
    ("vision_config.hidden_size", lambda c: c["vision_config"].update(hidden_size=144.0), TypeError),
    ("vision_config.patch_size", lambda c: c["vision_config"].update(patch_size=True), TypeError),
    ("vision_config.layer_norm_eps", lambda c: c["vision_config"].update(layer_norm_eps=-1.0), ValueError),
    ("vision_config.rope_theta", lambda c: c["vision_config"].update(rope_parameters={"rope_type": "axial",
                                                                                       "rope_theta": "big"}), TypeError),
    ("image_token_id", lambda c: c.update(image_token_id=10**9), ValueError),
    ("video_token_id", lambda c: c.update(video_token_id=-1), ValueError),
    ("vision_config", lambda c: c.update(vision_config=[1]), TypeError),
    ("text_config.eos_token_id", lambda c: c["text_config"].update(eos_token_id="end"), TypeError),
]


@pytest.mark.parametrize("field,edit,error", _BAD_CONFIGS, ids=[f"{b[0]}-{i}" for i, b in enumerate(_BAD_CONFIGS)])
def test_bad_config_values_are_named(native_dir, tmp_path, field, edit, error):
    ckpt = _copy(native_dir, tmp_path)
    _edit_config(ckpt, edit)
    with pytest.raises(error) as info:
        VideoLLaMA3ForCausalLM.from_pretrained(str(ckpt))
    assert field in str(info.value) and "config.json" in str(info.value)


# ---- saving ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(native_dir):
    return VideoLLaMA3ForCausalLM.from_pretrained(native_dir)


def _shard_count(path):
    return sum(1 for n in os.listdir(path) if n.startswith("model-") and n.endswith(".safetensors"))


def test_single_file_save_over_sharded_save_leaves_no_stale_index(model, tmp_path):
    target = tmp_path / "out"
    model.save_pretrained(str(target), max_shard_bytes=20_000)
    assert (target / SAFE_INDEX).exists() and _shard_count(target) > 1
    (target / "tokenizer.json").write_text("{}")  # a user file beside the weights survives a new save
    model.save_pretrained(str(target))
    assert sorted(os.listdir(target)) == ["config.json", "generation_config.json", SAFE_FILE, "tokenizer.json"]
    back = VideoLLaMA3ForCausalLM.from_pretrained(str(target))
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_failed_save_leaves_the_old_checkpoint_untouched(model, tmp_path, monkeypatch):
    target = tmp_path / "out"
    model.save_pretrained(str(target))
    before = {n: (target / n).read_bytes() for n in os.listdir(target)}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(str(target))
    assert {n: (target / n).read_bytes() for n in os.listdir(target)} == before
    assert os.listdir(tmp_path) == ["out"]  # no temporary folder left behind


def test_killed_save_leaves_no_partial_checkpoint_and_next_save_cleans_up(native_dir, tmp_path):
    target = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, time
        import vl3fast.models.videollama3.checkpoint as ck
        from vl3fast.models.videollama3 import VideoLLaMA3ForCausalLM
        m = VideoLLaMA3ForCausalLM.from_pretrained({native_dir!r})
        real = ck.save_safetensors
        def slow(tensors, directory, max_shard_bytes):
            real(tensors, directory, max_shard_bytes)
            os.kill(os.getpid(), signal.SIGKILL)  # killed after the weights, before config.json and the rename
        ck.save_safetensors = slow
        m.save_pretrained({str(target)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not target.exists()  # never a half-written checkpoint under the target name
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".out.vl3fast-tmp-")]
    assert len(leftovers) == 1
    VideoLLaMA3ForCausalLM.from_pretrained(native_dir).save_pretrained(str(target))
    assert os.listdir(tmp_path) == ["out"]
    VideoLLaMA3ForCausalLM.from_pretrained(str(target))
