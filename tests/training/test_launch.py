"""Real launches of `vl3fast train` on the packed data path: DeepSpeed's own launcher with 2 processes at ZeRO-3
(gloo), and exact resume after SIGKILL.  Each process start costs ~15-20 s (importing DeepSpeed), so each
launch is shared by several assertions."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vl3fast.training.trainer import PAUSE_IN_CHECKPOINT_ENV

from ._runs import CONFIGS, REPO, ds_json

pytest.importorskip("deepspeed")

def _clean_env(**extra) -> dict:
    """The child's environment: no process-group variables left by in-process tests, one thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def _overrides(init: str, data_dir: Path, out: Path, *extra: str) -> list[str]:
    over = [f"model.init={init}", f"data.annotations=[{data_dir / 'train.jsonl'}]",
            f"data.data_folder={data_dir / 'media'}", f"run.out={out}", "run.progress=false", *extra]
    return [a for o in over for a in ("--set", o)]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 2 processes, ZeRO-3, DeepSpeed's launcher -----------------------------------------------------------------
STEPS_2RANK = 3


# Packed at 256 tokens, these give one micro-batch per rank per step: rank 0 [longtext, text] (text only, the
# heavier bin: the packer deals bins by load), rank 1 [vid, text2] (a video).  The encoder must still run on
# rank 0 (ZeRO-3 gathers its parameters collectively) or the run hangs.
TWO_RANK_BUDGET = 256


def _two_rank_records():
    from ._fixtures import RECORDS

    by_id = {r["id"]: r for r in RECORDS}
    longtext = {"id": "longtext", "conversations": [{"from": "human", "value": "Describe the image in detail."},
                                                    {"from": "gpt", "value": "Which one is brighter? " * 11}]}
    return [longtext, by_id["vid"], by_id["text"], by_id["text2"]]


@pytest.fixture(scope="module")
def two_rank(tmp_path_factory, checkpoint_dir, data_dir):
    """The 2-process ZeRO-3 run (DeepSpeed's launcher) and the loaders of both ranks' plans."""
    from vl3fast.training import PackedLoader, load_annotations
    from vl3fast.training.config import load_config
    from vl3fast.training.recipe_data import load_processor

    from ._fixtures import write_annotations

    tmp = tmp_path_factory.mktemp("two_rank")
    (tmp / "media").symlink_to(data_dir / "media")
    write_annotations(tmp / "train.jsonl", _two_rank_records())
    base = [f"deepspeed.config={ds_json(tmp, 3)}", f"train.max_steps={STEPS_2RANK}", "run.save_every=0",
            "train.gradient_accumulation_steps=1", f"data.max_tokens={TWO_RANK_BUDGET}"]
    cfg = load_config(str(CONFIGS / "tiny_cpu.yaml"), [f"model.init={checkpoint_dir}", *base])
    samples, problems = load_annotations([tmp / "train.jsonl"])
    assert not problems
    processor = load_processor(cfg, str(checkpoint_dir))
    loaders = [PackedLoader(samples, processor, tmp / "media", token_budget=cfg.data.max_tokens,
                            patch_budget=cfg.data.max_patches, seed=cfg.data.seed, rank=r, world_size=2,
                            progress=False) for r in range(2)]
    kinds = {s.id: ("video" if any(m.kind == "video" for m in s.media) else "text" if not s.media else "image")
             for s in samples}
    out = tmp / "run"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()),
           "--module", "vl3fast.training", "--config", str(CONFIGS / "tiny_cpu.yaml"),
           *_overrides(str(checkpoint_dir), tmp, out, *base)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"out": out, "loaders": loaders, "seconds": seconds, "kinds": kinds, "stdout": proc.stdout}


class _GlobalBatch:
    """Both ranks' micro-batches of each step in one process: the same global batch as the 2-rank run."""

    def __init__(self, loaders):
        from vl3fast.training.recipe_data import StepData

        self.parts = [StepData(lo, 1) for lo in loaders]
        self.micro_steps_per_epoch = 2 * self.parts[0].micro_steps_per_epoch
        self.batch_stats = StepData.batch_stats

    def next_step(self):
        return [b for part in self.parts for b in part.next_step()]

    def state_dict(self):
        return [p.state_dict() for p in self.parts]

    def load_state_dict(self, state):
        for p, s in zip(self.parts, state):
            p.load_state_dict(s)


def test_two_ranks_zero3_text_only_rank_finishes_and_matches_one_process(two_rank, tmp_path, checkpoint_dir):
    from vl3fast.training.config import load_config
    from vl3fast.training.trainer import train

    out = two_rank["out"]
    records = _metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS_2RANK + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3 and summary["engine"] == "deepspeed"
    # the logged sample ids show the case: rank 0 text-only, rank 1 with a video, in the same step
    kinds = two_rank["kinds"]
    for record in records:
        rank0, rank1 = record["sample_ids"]
        assert rank0 and all(kinds[i] == "text" for b in rank0 for i in b), rank0
        assert any(kinds[i] == "video" for b in rank1 for i in b), rank1

    single = load_config(str(CONFIGS / "tiny_cpu.yaml"),
                         [f"model.init={checkpoint_dir}", "deepspeed.enabled=false", f"train.max_steps={STEPS_2RANK}",
                          "train.gradient_accumulation_steps=2", f"run.out={tmp_path / 'single'}", "run.progress=false",
                          "run.save_every=0", "run.save_at_end=false", f"data.max_tokens={TWO_RANK_BUDGET}"])
    ref = train(single, data=_GlobalBatch(two_rank["loaders"]))
    torch.testing.assert_close([r["loss"] for r in records], [r["loss"] for r in ref.records], rtol=1e-5, atol=0)
    assert [r["lr"] for r in records] == [r["lr"] for r in ref.records]
    assert [r["supervised_tokens"] for r in records] == [r["supervised_tokens"] for r in ref.records]


def test_two_rank_zero3_checkpoint_exports_consolidated(two_rank, tmp_path):
    from transformers import VideoLlama3ForConditionalGeneration

    from vl3fast.models.videollama3 import VideoLLaMA3ForCausalLM
    from vl3fast.training.export import export

    out = tmp_path / "export"
    export(str(two_rank["out"]), str(out))
    ids = torch.randint(7, 290, (1, 10))
    with torch.no_grad():
        ours = VideoLLaMA3ForCausalLM.from_pretrained(str(out))(ids).logits
        theirs = VideoLlama3ForConditionalGeneration.from_pretrained(str(out)).eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (out / "tokenizer_config.json").is_file() and (out / "chat_template.jinja").is_file()
    from vl3fast.chat import run_chat  # the folder is complete for `vl3fast chat`

    answer = run_chat(str(out), "Describe the image.", images=[str(two_rank["out"].parent / "media" / "a.png")],
                      max_new_tokens=3, stream=False, quiet=True)
    assert answer.prompt_tokens > 0 and len(answer.new_token_ids) >= 1


# ---- exact resume after SIGKILL --------------------------------------------------------------------------------
def _resume_cmd(init, data_dir, out, *extra):
    return [sys.executable, "-m", "vl3fast.training", "--config", str(CONFIGS / "tiny_cpu.yaml"),
            *_overrides(init, data_dir, out, "train.max_steps=8", "run.save_every=2", "run.keep_last=0",
                        "run.threads=1", *extra)]


def test_sigkilled_run_resumes_bitwise(tmp_path, checkpoint_dir, data_dir):
    init = str(checkpoint_dir)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    a = subprocess.run(_resume_cmd(init, data_dir, run_a), env=_clean_env(), capture_output=True, text=True,
                       timeout=300)
    assert a.returncode == 0, a.stderr[-4000:]

    # run B pauses inside the step-6 checkpoint (after every rank wrote it, before the rename) and is killed
    b = subprocess.Popen(_resume_cmd(init, data_dir, run_b), env=_clean_env(**{PAUSE_IN_CHECKPOINT_ENV: "6"}),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    for line in b.stdout:
        if "paused inside checkpoint 6" in line or time.time() > deadline:
            break
    os.kill(b.pid, signal.SIGKILL)
    b.wait(timeout=60)
    assert b.returncode == -signal.SIGKILL
    ckpts = sorted(os.listdir(run_b / "checkpoints"))
    assert ckpts == [".step-00000006.tmp", "step-00000002", "step-00000004"], ckpts

    refused = subprocess.run(_resume_cmd(init, data_dir, run_b), env=_clean_env(), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr and "--resume auto" in refused.stderr

    resumed = subprocess.run(_resume_cmd(init, data_dir, run_b) + ["--resume", "auto"], env=_clean_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout and "step-00000004" in resumed.stdout
    la, lb = _metrics(run_a), _metrics(run_b)
    assert [r["step"] for r in lb] == list(range(1, 9))
    for key in ("loss", "lr", "sample_ids", "grad_norm", "supervised_tokens"):
        assert [r[key] for r in lb] == [r[key] for r in la], key  # bitwise: JSON floats round-trip exactly
    from vl3fast.training.config import load_config

    resolved = load_config(str(run_b / "resolved.yaml"))  # the full configuration, loadable again
    assert resolved.train.max_steps == 8 and resolved.run.out == str(run_b) and resolved.model.init == init
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (run_a, run_b))
    assert sb["resumed_from_step"] == 4
    assert sb["parameter_checksum"] == sa["parameter_checksum"]
    assert sb["optimizer_checksums"] == sa["optimizer_checksums"]
    assert sorted(os.listdir(run_b / "checkpoints")) == [f"step-0000000{s}" for s in (2, 4, 6, 8)]
