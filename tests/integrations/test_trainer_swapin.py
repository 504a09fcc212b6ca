"""transformers.Trainer runs with vl3fast applied: 5 steps, losses within 1e-4 of the stock run.

Stock: transformers' model on padded batches.  vl3fast: the same model, apply_vl3fast(model), the same
samples packed into one row per step.  Also through the Trainer's own DeepSpeed integration (accelerate;
ZeRO-2 and ZeRO-3, one process, gloo), in a subprocess so that its process group and environment stay there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vl3fast

from . import tiny_vlms as tv

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 5


def _full(param: torch.nn.Parameter) -> torch.Tensor:
    """The whole parameter, also when ZeRO-3 holds only a partition of it."""
    if hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().clone()
    return param.detach().clone()


def train(family, tmp_path, *, swap: bool, deepspeed: dict | None = None, encoded: bool = False) -> list[float]:
    from transformers import Trainer, TrainingArguments
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # A ZeRO-3 TrainingArguments of an earlier run in this process stays registered and would make the
    # model below be built partitioned (zero.Init), so that tv.build's weights never reach it.
    unset_hf_deepspeed_config()
    model = tv.build(family)
    if encoded:  # VideoLLaMA3 on vl3fast.training's EncodedSamples: its packing collator vs a padding one
        from vl3fast.integrations.transformers_collator import VideoLlama3PackedCollator

        dataset = tv.EncodedDataset(model.config, tv.trainer_samples())
        collator = VideoLlama3PackedCollator() if swap else tv.padded_videollama3
    else:
        dataset = tv.SampleDataset(tv.trainer_samples())
        collator = (tv.PackedCollator if swap else tv.PaddedCollator)(family, model.config)
    if swap:
        vl3fast.apply_vl3fast(model)  # before Trainer(...)
    args = TrainingArguments(
        output_dir=str(tmp_path / ("vl3fast" if swap else "stock")), max_steps=STEPS, per_device_train_batch_size=2,
        learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=deepspeed is None, remove_unused_columns=False, disable_tqdm=True, seed=0, data_seed=0,
        dataloader_num_workers=0, deepspeed=deepspeed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    vision_weight = next(p for n, p in model.named_parameters() if "vis" in n and n.endswith("weight"))
    before = vision_weight.detach().clone()
    trainer.train()
    assert not torch.equal(_full(vision_weight), before), "the vision tower trains"
    if deepspeed is not None:
        assert type(trainer.model_wrapped).__name__ == "DeepSpeedEngine", type(trainer.model_wrapped)
        zero = {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[deepspeed["zero_optimization"]["stage"]]
        assert type(trainer.optimizer.optimizer).__name__ == zero, type(trainer.optimizer.optimizer)
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("family", ["video_llama_3", "qwen2_5_vl"])
def test_trainer_losses_match_stock(family, tmp_path):
    stock = train(family, tmp_path, swap=False)
    ours = train(family, tmp_path, swap=True)
    assert len(stock) == len(ours) == STEPS
    assert max(abs(a - b) for a, b in zip(stock, ours)) <= 1e-4, (stock, ours)
    assert all(isinstance(x, float) for x in stock + ours) and len(set(stock)) == STEPS


def test_trainer_videollama3_with_the_training_packing_collator(tmp_path):
    """vl3fast.training's collator (pruned videos, kept placeholders only) through VideoLlama3PackedCollator."""
    stock = train("video_llama_3", tmp_path, swap=False, encoded=True)
    ours = train("video_llama_3", tmp_path, swap=True, encoded=True)
    assert len(stock) == len(ours) == STEPS
    assert max(abs(a - b) for a, b in zip(stock, ours)) <= 1e-4, (stock, ours)


DEEPSPEED_SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # build_notes.md §6: no JIT op
    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    from tests.integrations.test_trainer_swapin import train
    family, out, result = sys.argv[1], Path(sys.argv[2]), {}
    for stage in (2, 3):
        config = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto",
                  "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                  "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}}}
        result[stage] = {"stock": train(family, out / f"z{stage}", swap=False, deepspeed=config),
                         "ours": train(family, out / f"z{stage}", swap=True, deepspeed=config)}
    print(json.dumps(result))
""")


@pytest.mark.slow  # ~60 s on 2 busy cores, most of it `import deepspeed`; `make test` runs it
@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_trainer_deepspeed_zero2_zero3_losses_match_stock(family, tmp_path):
    pytest.importorskip("deepspeed")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29600 + os.getpid() % 300), PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT, family, str(tmp_path)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for stage in ("2", "3"):
        stock, ours = result[stage]["stock"], result[stage]["ours"]
        assert len(stock) == len(ours) == STEPS
        assert max(abs(a - b) for a, b in zip(stock, ours)) <= 1e-4, (stage, stock, ours)


def _readme_recipe() -> str:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(repo, "training", "README.md")) as f:
        text = f.read()
    section = text[text.index("## Swap vl3fast into a transformers Trainer run"):]
    return section[section.index("```python\n") + len("```python\n"): section.index("```\n\n")]


@pytest.mark.slow  # a subprocess that imports transformers and decodes videos; `make test` runs it
def test_readme_recipe_runs(tmp_path):
    """training/README.md's script, as written, fine-tunes a tiny transformers VideoLLaMA3 checkpoint."""
    pytest.importorskip("av")
    from tests.processing._tokenizer import save_hf_processor
    from tests.training._fixtures import hf_model, write_annotations, write_media

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    hf_model().save_pretrained(str(ckpt))
    save_hf_processor(ckpt, image_kwargs=dict(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 24}),
                      video_kwargs=dict(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 48}))
    write_media(tmp_path / "media")
    write_annotations(tmp_path / "train.jsonl")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "finetune.py"
    script.write_text(_readme_recipe())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), str(ckpt), str(tmp_path / "train.jsonl"),
                           str(tmp_path / "media"), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "train_loss" in proc.stdout + proc.stderr
    from transformers import VideoLlama3ForConditionalGeneration

    trained = VideoLlama3ForConditionalGeneration.from_pretrained(str(out))
    initial = VideoLlama3ForConditionalGeneration.from_pretrained(str(ckpt))
    assert not torch.equal(trained.model.vision_model.encoder.layers[0].self_attn.q_proj.weight,
                           initial.model.vision_model.encoder.layers[0].self_attn.q_proj.weight)
