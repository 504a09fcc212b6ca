"""VideoLLaMA3ForCausalLM against transformers' VideoLlama3ForConditionalGeneration on tiny random checkpoints
written in both formats: vision features and logits (fp32, relative error <= 1e-4), greedy tokens (identical),
batched vs single prompts, pruning placements, checkpoint errors and the save -> transformers round trip."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

import vl3fast
from vl3fast.models.videollama3 import VideoLLaMA3Config, VideoLLaMA3ForCausalLM, downsample_blocks
from vl3fast.models.videollama3 import state_dict_adapter as adapter
from vl3fast.models.videollama3.vision import VisionEncoder

from .tiny_vl3 import PROMPTS, VIDEO_ID, image_prompt, left_pad_batch, rel_err, video_pixels

RTOL = 1e-4  # fp32 parity bar against transformers, set by the model issue (#6)
NEW_TOKENS = 16
BACKENDS = ["reference", "vl3fast"]


@pytest.fixture(scope="module")
def loaded(checkpoints):
    """vl3fast models loaded from both formats of the same weights."""
    hf, dirs = checkpoints
    return hf, {fmt: VideoLLaMA3ForCausalLM.from_pretrained(d) for fmt, d in dirs.items()}


def _greedy(model, inputs):
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)


# ---- parity with transformers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["native", "official"])
def test_vision_features_match_transformers(loaded, fmt, backend):
    hf, models = loaded
    model = models[fmt]
    model.attn_backend = backend
    video = PROMPTS["pruned_video"]()
    cases = [(p["pixel_values"], p["image_grid_thw"], p["image_merge_sizes"])
             for p in (PROMPTS["image"](), PROMPTS["multi_image"]())]
    cases.append((video["pixel_values_videos"], video["video_grid_thw"], video["video_merge_sizes"]))
    with torch.no_grad():
        for pixels, grid, merge in cases:
            ours_MC = model.vision(pixels, grid, merge, backend=backend)
            theirs_MC = hf.model.vision_model(pixel_values=pixels, grid_thw=grid, merge_sizes=merge).last_hidden_state
            assert ours_MC.shape == theirs_MC.shape
            assert rel_err(ours_MC, theirs_MC) <= RTOL
            ours_ME = model.get_visual_features(pixels, grid, merge)
            theirs_ME = torch.cat(hf.model.get_image_features(pixels, grid, merge).pooler_output)
            assert rel_err(ours_ME, theirs_ME) <= RTOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("fmt", ["native", "official"])
def test_logits_and_greedy_tokens_match_transformers(loaded, fmt, prompt, backend):
    hf, models = loaded
    model = models[fmt]
    model.attn_backend = backend
    inputs = PROMPTS[prompt]()
    with torch.no_grad():
        ours, theirs = model(**inputs).logits, hf(**inputs).logits
    assert ours.shape == theirs.shape
    assert rel_err(ours, theirs) <= RTOL
    ours_ids, theirs_ids = _greedy(model, inputs), _greedy(hf, inputs)
    assert ours_ids.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    assert torch.equal(ours_ids, theirs_ids)


def test_batched_generation_matches_single_prompts(loaded):
    """Mixed image / pruned video / text / multi-image prompts, left padded, give each prompt's own tokens."""
    hf, models = loaded
    model = models["official"]
    names = ["image", "pruned_video", "text", "multi_image"]
    prompts = [PROMPTS[n]() for n in names]
    batch = left_pad_batch(prompts)
    out = _greedy(model, batch)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**batch).logits
    for i, (name, p) in enumerate(zip(names, prompts)):
        single = _greedy(model, p)
        n = p["input_ids"].shape[1]
        assert torch.equal(out[i, width - n:], single[0]), name
        assert torch.equal(single, _greedy(hf, p)), name
        with torch.no_grad():
            alone = model(**p).logits[0]
        assert rel_err(logits[i, width - n:], alone) <= RTOL, name


# ---- pruning ---------------------------------------------------------------------------------------------------------
def test_pruning_before_encoder_keeps_true_positions(loaded):
    """Frame 1 repeats frame 0, so DiffFP keeps only its top-left merged token (min_tokens).  Pruned before the
    encoder, that token attends only to itself at its true positions (rows/cols 0..1): it must equal the same
    four patches encoded as a 2x2 image; frame 0 must equal frame 0 encoded alone."""
    _, models = loaded
    model = models["native"]
    t, h, w, m = 2, 4, 6, 2
    pixels = video_pixels(t, h, w, m, {1: list(range(6))}, seed=5)
    grid, merge = torch.tensor([[t, h, w]]), torch.tensor([m])
    keep = vl3fast.reference.frame_keep_mask(pixels, grid, merge)
    assert keep.tolist() == [True] * 6 + [True] + [False] * 5
    with torch.no_grad():
        model.pruning = "before"
        before = model.get_visual_features(pixels, grid, merge, keep)
        model.pruning = "after"
        after = model.get_visual_features(pixels, grid, merge, keep)
        frame0 = model.get_visual_features(pixels[: h * w], torch.tensor([[1, h, w]]), merge)
        block = model.get_visual_features(pixels[h * w: h * w + 4], torch.tensor([[1, 2, 2]]), merge)
    assert before.shape == after.shape == (7, model.config.text.hidden_size)
    assert rel_err(before[:6], frame0) <= RTOL and rel_err(after[:6], frame0) <= RTOL
    assert rel_err(before[6:], block) <= RTOL
    assert rel_err(after[6:], block) > 1e-3  # after the encoder the kept token saw its whole frame


def test_pruning_before_with_everything_kept_equals_no_pruning(loaded):
    _, models = loaded
    model = models["native"]
    p = PROMPTS["pruned_video"]()
    args = (p["pixel_values_videos"], p["video_grid_thw"], p["video_merge_sizes"])
    keep_all = torch.ones_like(p["video_compression_mask"])
    with torch.no_grad():
        model.pruning = "before"
        before = model.get_visual_features(*args, keep_all)
        model.pruning = "after"
        plain = model.get_visual_features(*args)
    assert rel_err(before, plain) <= RTOL


def test_pruning_before_generates_with_processor_mask(loaded):
    _, models = loaded
    model = models["native"]
    p = PROMPTS["pruned_video"]()
    assert int(p["video_compression_mask"].sum()) < p["video_compression_mask"].numel()
    model.pruning = "before"
    try:
        out = _greedy(model, p)
    finally:
        model.pruning = "after"
    assert out.shape == (1, p["input_ids"].shape[1] + NEW_TOKENS)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_downsample_matches_bilinear_reference(m):
    grid = torch.tensor([[2, 3 * m, 2 * m], [1, m, 4 * m]])
    merge = torch.tensor([m, m])
    x = torch.randn(int(grid.prod(1).sum()), 8)
    tokens = [int(t * (h // m) * (w // m)) for t, h, w in grid.tolist()]
    torch.testing.assert_close(downsample_blocks(x, tokens, [m, m]), vl3fast.reference.downsample(x, grid, merge),
                               rtol=1e-6, atol=1e-6)


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def test_save_pretrained_loads_in_transformers(loaded, tmp_path):
    from transformers import VideoLlama3ForConditionalGeneration

    hf, models = loaded
    models["official"].save_pretrained(str(tmp_path))
    reloaded = VideoLlama3ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    inputs = PROMPTS["multi_image"]()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, hf(**inputs).logits)
    again = VideoLLaMA3ForCausalLM.from_pretrained(str(tmp_path))
    for (k, a), (_, b) in zip(again.state_dict().items(), models["official"].state_dict().items()):
        assert torch.equal(a, b), k


def test_sharded_safetensors_and_bin(loaded, tmp_path):
    hf, models = loaded
    model = models["native"]
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_bytes=200_000)
    assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
    inputs = PROMPTS["image"]()
    with torch.no_grad():
        want = model(**inputs).logits
        got = VideoLLaMA3ForCausalLM.from_pretrained(str(tmp_path / "sharded"))(**inputs).logits
        assert torch.equal(got, want)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
        torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
        got = VideoLLaMA3ForCausalLM.from_pretrained(str(bin_dir))(**inputs).logits
        assert torch.equal(got, want)


def test_dtype_and_device_arguments(checkpoints):
    _, dirs = checkpoints
    model = VideoLLaMA3ForCausalLM.from_pretrained(dirs["official"], dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32  # as transformers keeps it
    inputs = PROMPTS["image"]()
    fp32 = VideoLLaMA3ForCausalLM.from_pretrained(dirs["official"])
    with torch.no_grad():
        assert rel_err(model(**inputs).logits.float(), fp32(**inputs).logits) < 0.1
    with pytest.raises(TypeError, match="dtype"):
        VideoLLaMA3ForCausalLM.from_pretrained(dirs["official"], dtype="int8")


def _rewrite(src: str, dst, edit_tensors=None, edit_config=None) -> str:
    from safetensors.torch import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    config = json.load(open(os.path.join(src, "config.json")))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    return str(dst)


def test_checkpoint_errors_name_the_problem(checkpoints, tmp_path):
    _, dirs = checkpoints
    src = dirs["official"]

    def drop_and_add(t):
        del t["model.vision_encoder.encoder.layers.1.mlp.fc2.bias"]
        t["model.vision_encoder.extra_head.weight"] = torch.zeros(2)

    bad = _rewrite(src, tmp_path / "keys", edit_tensors=drop_and_add)
    with pytest.raises(ValueError) as err:
        VideoLLaMA3ForCausalLM.from_pretrained(bad)
    msg = str(err.value)
    assert "missing keys (1)" in msg and "vision.layers.1.mlp.fc2.bias" in msg
    assert "unexpected keys (1)" in msg and "model.vision_encoder.extra_head.weight" in msg

    bad = _rewrite(src, tmp_path / "shape", edit_config=lambda c: c["vision_encoder_config"].update(
        intermediate_size=176))
    with pytest.raises(ValueError, match=r"shape mismatches \(6\).*mlp.fc1.weight"):
        VideoLLaMA3ForCausalLM.from_pretrained(bad)

    native_as_official = _rewrite(dirs["native"], tmp_path / "mixed", edit_config=lambda c: c.update(
        model_type="videollama3_qwen2", vision_encoder_config=c["vision_config"]))
    with pytest.raises(ValueError, match="unexpected keys"):
        VideoLLaMA3ForCausalLM.from_pretrained(native_as_official)

    bad = _rewrite(src, tmp_path / "type", edit_config=lambda c: c.update(model_type="llava"))
    with pytest.raises(ValueError, match="unknown model_type 'llava'"):
        VideoLLaMA3ForCausalLM.from_pretrained(bad)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    with pytest.raises(FileNotFoundError, match="has no weights"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not download weights"):
        VideoLLaMA3ForCausalLM.from_pretrained("no-such-org/no-such-model-vl3fast")


def test_more_bad_checkpoints_name_the_problem(checkpoints, tmp_path):
    """The rest of the model issue's (#6) bad-input list: a file or a non-checkpoint directory, a config without
    a model type, a conv patch embedding of another patch size, a sharded index whose shards are absent."""
    _, dirs = checkpoints
    src = dirs["native"]
    with pytest.raises(ValueError, match="is a file, not a checkpoint directory"):
        VideoLLaMA3ForCausalLM.from_pretrained(os.path.join(src, "config.json"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("not json {")
    with pytest.raises(ValueError, match="config.json' is not valid JSON"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(tmp_path / "notes"))
    bad = _rewrite(src, tmp_path / "notype", edit_config=lambda c: c.pop("model_type"))
    with pytest.raises(ValueError, match="unknown model_type None"):
        VideoLLaMA3ForCausalLM.from_pretrained(bad)
    bad = _rewrite(src, tmp_path / "patch", edit_config=lambda c: c["vision_config"].update(patch_size=16))
    with pytest.raises(ValueError, match=r"shape mismatches \(1\).*patch_embedding.weight: checkpoint "
                                         r"\(\d+, 3, 14, 14\), config expects \(\d+, 768\)"):
        VideoLLaMA3ForCausalLM.from_pretrained(bad)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="names shard files that are absent"):
        VideoLLaMA3ForCausalLM.from_pretrained(str(sharded))


def test_bad_visual_inputs_name_the_problem(loaded):
    _, models = loaded
    model = models["native"]
    p = PROMPTS["image"]()
    with pytest.raises(ValueError, match="must have 588 values per patch"):
        model(**dict(p, pixel_values=p["pixel_values"][:, :500]))
    video = PROMPTS["pruned_video"]()
    for pruning in ("after", "before"):
        model.pruning = pruning
        try:
            with pytest.raises(ValueError, match=r"video_compression_mask\) has 23 entries but the grid has 24"):
                model(**dict(video, video_compression_mask=video["video_compression_mask"][1:]))
        finally:
            model.pruning = "after"


def test_placeholder_count_mismatch_is_an_error(loaded):
    _, models = loaded
    model = models["native"]
    p = PROMPTS["image"]()
    p["input_ids"] = p["input_ids"][:, 1:-3]  # drops the last placeholder... and two text tokens
    p["input_ids"][0, -1] = 5
    p["attention_mask"] = torch.ones_like(p["input_ids"])
    with pytest.raises(ValueError, match="image placeholder count does not match"):
        model(**p)
    video = PROMPTS["pruned_video"]()
    del video["video_compression_mask"]  # all merged tokens now, but the prompt has only the kept placeholders
    with pytest.raises(ValueError, match="video placeholder count does not match"):
        model(**video)
    text = PROMPTS["text"]()
    text["input_ids"][0, 2] = VIDEO_ID
    with pytest.raises(ValueError, match="no video pixel values"):
        model(**text)


def test_bad_settings():
    assert vl3fast.VideoLLaMA3ForCausalLM is VideoLLaMA3ForCausalLM  # the top-level export
    config = VideoLLaMA3Config.from_name("tiny")
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        VideoLLaMA3ForCausalLM(config, attn_backend="flash")
    with pytest.raises(ValueError, match="pruning must be one of"):
        VideoLLaMA3ForCausalLM(config, pruning="middle")
    with pytest.raises(ValueError, match="unknown VideoLLaMA3 preset"):
        VideoLLaMA3Config.from_name("13b")
    model = VideoLLaMA3ForCausalLM(config)
    p = image_prompt([[1, 4, 6]], [1])
    with pytest.raises(ValueError, match="pixel_values has 24 patches but the grid describes 48"):
        model.vision(p["pixel_values"], torch.tensor([[2, 4, 6]]), torch.tensor([1]), backend="reference")
    with pytest.raises(ValueError, match=r"divisible by merge_sizes\[0\] = 4"):
        model.vision(p["pixel_values"], p["image_grid_thw"], torch.tensor([4]), backend="reference")


# ---- configuration ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["2b", "7b", "tiny"])
@pytest.mark.parametrize("fmt", ["native", "official"])
def test_config_round_trips_both_formats(name, fmt):
    config = VideoLLaMA3Config.from_name(name)
    back = VideoLLaMA3Config.from_dict(json.loads(json.dumps(config.to_dict(fmt))))
    assert back.vision == config.vision and back.text == config.text
    assert (back.image_token_id, back.video_token_id, back.tie_word_embeddings) == (
        config.image_token_id, config.video_token_id, config.tie_word_embeddings)
    assert back.source_format == fmt


def test_presets_match_the_released_models():
    from transformers import VideoLlama3Config

    two, seven = VideoLLaMA3Config.from_name("2b"), VideoLLaMA3Config.from_name("7b")
    assert (two.vision.hidden_size, two.vision.num_hidden_layers, two.vision.num_attention_heads,
            two.vision.intermediate_size, two.vision.head_dim) == (1152, 27, 16, 4304, 72)
    assert (two.text.hidden_size, two.text.num_key_value_heads, two.tie_word_embeddings) == (1536, 2, True)
    assert (seven.text.hidden_size, seven.text.num_attention_heads, seven.tie_word_embeddings) == (3584, 28, False)
    hf = VideoLlama3Config.from_dict(two.to_dict("native"))  # transformers reads what vl3fast writes
    assert (hf.vision_config.hidden_size, hf.text_config.hidden_size, hf.text_config.num_key_value_heads,
            hf.tie_word_embeddings, hf.image_token_id) == (1152, 1536, 2, True, 151655)
    assert hf.text_config.rope_parameters["rope_theta"] == 1e6


# ---- full-size vision encoder ----------------------------------------------------------------------------------------
FULL = os.environ.get("VL3FAST_FULL_TESTS") == "1"


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_size_vision_encoder_matches_transformers(backend):
    """SigLIP-NaViT sizes (1152 hidden, 16 heads x 72, MLP 4304) on one 448x448 image (32x32 patches, m=1).
    27 layers with VL3FAST_FULL_TESTS=1, else 3 (the 27-layer run takes minutes on a 2-core CI box)."""
    from transformers import VideoLlama3VisionConfig
    from transformers.models.video_llama_3.modeling_video_llama_3 import VideoLlama3VisionModel

    layers = 27 if FULL else 3
    cfg = VideoLLaMA3Config.from_name("2b").vision
    cfg.num_hidden_layers = layers
    hf_cfg = VideoLlama3VisionConfig(**cfg.to_dict("native"))
    torch.manual_seed(0)
    hf = VideoLlama3VisionModel(hf_cfg).eval()
    ours = VisionEncoder(cfg).eval()
    ours.load_state_dict(adapter.vision_state_from_transformers(hf.state_dict()), strict=True)
    pixels = torch.rand(32 * 32, 588) * 2 - 1
    grid, merge = torch.tensor([[1, 32, 32]]), torch.tensor([1])
    with torch.no_grad():
        t0 = time.perf_counter()
        theirs = hf(pixel_values=pixels, grid_thw=grid, merge_sizes=merge).last_hidden_state
        t1 = time.perf_counter()
        mine = ours(pixels, grid, merge, backend=backend)
        t2 = time.perf_counter()
    print(f"\nfull-size vision, {layers} layers, 1024 patches: transformers {t1 - t0:.2f}s, vl3fast[{backend}] "
          f"{t2 - t1:.2f}s")
    assert rel_err(mine, theirs) <= RTOL
