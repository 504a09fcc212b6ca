"""`vl3fast data validate ANN.jsonl --data-folder DIR [--decode] [--model CKPT_DIR]`: every problem, file:line.

Checks, all before a run starts:
  - the schema (official `conversations` or `messages`), a tag count that differs from the media count,
    roles that do not alternate, no non-empty assistant turn, duplicate ids          (`data.load_annotations`)
  - missing media; media that will not open (header probe; `--decode`: a full decode of the sampled frames)
  - a sample over the token budget (`estimate_tokens`, exact before DiffFP pruning; `--decode`: exact after)
    or the patch budget
  - a sample with no supervised token left after truncation to `--max-length`, or a truncation that would
    cut visual tokens (never done)
Without `--model` the default processing settings are used and only visual tokens are counted (the text
checks need a tokenizer and are reported as skipped).  With `--model` the checkpoint's processor and
tokenizer count every token.  `--decode --write-lengths FILE` writes each sample's exact post-pruning
length (JSON lines {"id", "tokens", "patches"}) for the packer (`PackedLoader(lengths=FILE)`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .data import load_annotations
from .encode import SampleError, decode_media, encode_sample, estimate_sample, generation_prompt_ids, supervised_after_truncation


@dataclass
class ValidationReport:
    num_samples: int = 0
    problems: list[str] = field(default_factory=list)
    bad_samples: int = 0
    notes: list[str] = field(default_factory=list)
    lengths: dict = field(default_factory=dict)   # id -> (tokens, patches), exact with decode

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        good = self.num_samples - self.bad_samples
        head = (f"{self.num_samples} sample(s) parsed: {good} usable, {self.bad_samples} with problems; "
                f"{len(self.problems)} problem(s)")
        return "\n".join(self.problems + self.notes + [head])


def validate(paths, data_folder=None, *, model: str | None = None, decode: bool = False, budget: int = 16384,
             patch_budget: int | None = None, max_length: int | None = None, timeout: float | None = 60.0,
             progress: bool | None = None) -> ValidationReport:
    from tqdm import tqdm

    from ..processing import VideoLLaMA3Processor

    report = ValidationReport()
    samples, problems = load_annotations(paths)
    report.problems.extend(problems)
    bad_records = {p.split(": ", 1)[0] for p in problems}  # "file:line" of each record with a problem
    report.num_samples, report.bad_samples = len(samples) + len(bad_records), len(bad_records)
    processor = VideoLLaMA3Processor.from_pretrained(model) if model is not None else None
    if processor is None:
        report.notes.append("note: no --model: visual tokens only; the text-token, truncation and supervision "
                            "checks need --model CKPT_DIR")
    if decode and processor is None:
        report.notes.append("note: --decode without --model decodes and checks the media only")
    gen_len = len(generation_prompt_ids(processor)) if processor is not None else 0
    for s in tqdm(samples, desc="validating", unit="sample", leave=False, disable=not progress if progress is not None
                  else None):
        found = _check_sample(s, processor, data_folder, decode, budget, patch_budget, max_length, gen_len, timeout,
                              report)
        if found:
            report.bad_samples += 1
            report.problems.extend(f"{s.where}: sample {s.id!r}: {p}" for p in found)
    return report


def _strip(exc: Exception, sample) -> str:
    text = str(exc)
    prefix = f"{sample.where}: sample {sample.id!r}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _check_sample(s, processor, data_folder, decode, budget, patch_budget, max_length, gen_len, timeout, report):
    found = []
    try:
        est = estimate_sample(s, processor, data_folder, timeout=timeout)
    except SampleError as e:
        return [_strip(e, s)]
    tokens, patches = est.length.tokens, est.length.patches
    if decode:
        if processor is None:
            try:
                decode_media(s, data_folder, timeout=timeout)
            except SampleError as e:
                return [_strip(e, s)]
        else:
            try:
                enc = encode_sample(s, processor, data_folder, max_length=max_length, timeout=timeout)
            except SampleError as e:
                return [_strip(e, s)]
            tokens, patches = enc.num_tokens, enc.num_patches
            report.lengths[s.id] = (tokens, patches)
    elif processor is not None:
        left, cuts_visual = supervised_after_truncation(s, est, gen_len, max_length)
        if cuts_visual:
            found.append(f"truncation to --max-length {max_length} would cut visual tokens ({tokens} tokens; visual "
                         "tokens are never truncated)")
        elif left == 0:
            found.append(f"no supervised token left after truncation to --max-length {max_length} ({tokens} tokens)")
        tokens = min(tokens, max_length) if max_length is not None else tokens
    what = "tokens" if processor is not None else "visual tokens"
    if tokens > budget:
        found.append(f"{tokens} {what} exceed the token budget of {budget}"
                     + ("" if decode else " (before DiffFP pruning; --decode gives the exact count)"))
    if patch_budget is not None and patches > patch_budget:
        found.append(f"{patches} vision patches exceed the patch budget of {patch_budget}")
    return found


def write_lengths(report: ValidationReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for sample_id, (tokens, patches) in report.lengths.items():
            f.write(json.dumps({"id": sample_id, "tokens": tokens, "patches": patches}) + "\n")
