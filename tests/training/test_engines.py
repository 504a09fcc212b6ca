"""In-process training runs on tiny_cpu (one process, gloo): DeepSpeed ZeRO 0-3 against plain torch, stage
freezing and per-module learning rates, LoRA train -> merge -> export -> load, ZeRO-3 export -> transformers."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from vl3fast.models.videollama3 import VideoLLaMA3ForCausalLM
from vl3fast.training.export import export
from vl3fast.training.modules import module_group, unload_lora

from vl3fast.training.trainer import train

from ._runs import losses, tiny_config

pytest.importorskip("deepspeed")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def tiny(tmp, checkpoint_dir, data_dir):
    """tiny_config(name, *overrides, ...) on the test checkpoint and data."""
    return lambda name, *over, **kw: tiny_config(tmp, name, checkpoint_dir, data_dir, *over, **kw)


@pytest.fixture(scope="module")
def torch_run(tiny):
    return train(tiny("torch", "train.max_steps=3", "run.save_every=0", "run.save_at_end=false", zero=None))


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_deepspeed_zero_stages_match_plain_torch(tiny, torch_run, zero):
    run = train(tiny(f"zero{zero}", "train.max_steps=3", "run.save_every=0", "run.save_at_end=false", zero=zero))
    assert run.summary["engine"] == "deepspeed" and run.summary["zero_stage"] == zero
    assert [r["lr"] for r in run.records] == [r["lr"] for r in torch_run.records]
    torch.testing.assert_close(losses(run), losses(torch_run), rtol=1e-6, atol=0)
    torch.testing.assert_close([r["grad_norm"] for r in run.records], [r["grad_norm"] for r in torch_run.records],
                               rtol=1e-5, atol=0)


def _before(init: str) -> dict[str, torch.Tensor]:
    model = VideoLLaMA3ForCausalLM.from_pretrained(init)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3", "stage4"])
def test_stage_config_one_step_freezes_and_moves_each_module_at_its_lr(tiny, stage):
    cfg = tiny(stage, "train.max_steps=1", "run.save_at_end=false", stage_config=f"{stage}.yaml")
    assert cfg.train.stage == stage
    before = _before(cfg.model.init)
    run = train(cfg)
    (record,) = run.records
    moved = {}
    for name, p in run.model.named_parameters():
        group = module_group(name)
        moved[group] = max(moved.get(group, 0.0), float((p.detach() - before[name]).abs().max()))
    for group, lr in cfg.train.lr.items():
        if lr is None:
            assert moved[group] == 0.0, f"{stage}: frozen {group} moved by {moved[group]}"
            assert group not in record["lr"]
        else:
            # Adam's first update is lr * g / (|g| + eps) per element: at most lr, close to it for most
            assert record["lr"][group] == lr
            # (plus float32 rounding of the updated weights: < 10% at these sizes)
            assert 0.5 * lr < moved[group] < 1.1 * lr, f"{stage}: {group} moved {moved[group]}, lr {lr}"


def _outputs(model, ids, pixels):
    """LLM logits of text ids and vision-encoder features of one 4x4-patch image (what LoRA adapts)."""
    with torch.no_grad():
        return (model(ids).logits,
                model.vision(pixels, torch.tensor([[1, 4, 4]]), torch.tensor([1]), backend=model.attn_backend))


@pytest.mark.parametrize("vision", [False, True], ids=["llm", "llm+vision"])
def test_lora_train_merge_export_load(tmp, tiny, vision):
    extra = ["lora.vision=true", "train.lr.vision=1.0e-4"] if vision else []
    cfg = tiny(f"lora_{vision}", "train.max_steps=3", "run.save_every=0", "lora.r=4", *extra,
               stage_config="finetune_lora.yaml")
    assert cfg.lora.enabled and cfg.lora.vision == vision
    before = _before(cfg.model.init)
    run = train(cfg)
    trained = dict(run.model.named_parameters())
    adapted = {n.split(".")[0] for n in trained if ".lora_" in n}
    assert adapted == ({"language_model", "vision"} if vision else {"language_model"})
    for name, p in trained.items():  # frozen: every LoRA'd module's own weights, and the vision encoder without LoRA
        if ".lora_" not in name and not name.startswith("projector."):
            assert torch.equal(p.detach(), before[name.replace(".base_layer.", ".")]), name
    assert not torch.equal(trained["projector.readout.0.weight"].detach(), before["projector.readout.0.weight"])

    merged_dir, adapter_dir = tmp / f"lora_merged_{vision}", tmp / f"lora_adapter_{vision}"
    export(run.run_dir, str(merged_dir), merge_lora_adapters=True)
    export(run.run_dir, str(adapter_dir))
    assert (adapter_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (adapter_dir / "adapter" / "adapter_config.json").is_file()
    ids, pixels = torch.randint(7, 290, (1, 12)), torch.rand(16, 588) * 2 - 1  # ids: not special / placeholders
    want = _outputs(unload_lora(copy.deepcopy(run.model).eval(), merge=True), ids, pixels)
    got = _outputs(VideoLLaMA3ForCausalLM.from_pretrained(str(merged_dir)), ids, pixels)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    base = VideoLLaMA3ForCausalLM.from_pretrained(str(adapter_dir))
    for name, p in base.named_parameters():  # the unmerged export keeps the adapted modules' weights as they were
        if not name.startswith("projector."):
            assert torch.equal(p, before[name]), name


def test_zero3_export_loads_in_transformers_and_vl3fast(tmp, tiny):
    from transformers import VideoLlama3ForConditionalGeneration

    run = train(tiny("z3export", "train.max_steps=2", zero=3))
    out = tmp / "z3export_out"
    export(run.run_dir, str(out))
    ids = torch.randint(7, 290, (1, 12))  # not the special / placeholder ids
    run.model.eval()
    with torch.no_grad():
        want = run.model(ids).logits  # ZeRO-3 gathers each module's parameters in its forward hook
        ours = VideoLLaMA3ForCausalLM.from_pretrained(str(out))(ids).logits
        theirs = VideoLlama3ForConditionalGeneration.from_pretrained(str(out)).eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs, want, rtol=1e-5, atol=1e-5)
    official = tmp / "z3export_official"
    export(run.run_dir, str(official), fmt="official")
    assert json.loads((official / "config.json").read_text())["model_type"] == "videollama3_qwen2"
    with torch.no_grad():
        torch.testing.assert_close(VideoLLaMA3ForCausalLM.from_pretrained(str(official))(ids).logits, want,
                                   rtol=1e-5, atol=1e-5)
