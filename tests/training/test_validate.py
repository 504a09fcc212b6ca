"""`vl3fast data validate`: one test per problem it must catch, a clean file that passes, and the lengths file."""
from __future__ import annotations

import json

import pytest

from vl3fast import cli

from ._fixtures import RECORDS, write_annotations

TEXT_TURNS = [{"from": "human", "value": "Which one is brighter?"}, {"from": "gpt", "value": "The image."}]


def run(capsys, ann, data_dir, *extra):
    code = cli.main(["data", "validate", str(ann), "--data-folder", str(data_dir / "media"), *extra])
    out = capsys.readouterr().out
    return code, out


def problems_of(out: str) -> list[str]:
    return [line for line in out.splitlines() if ".jsonl:" in line]


def one(tmp_path, record, name="ann.jsonl"):
    return write_annotations(tmp_path / name, [record])


def test_clean_file_passes(capsys, data_dir, checkpoint_dir, tmp_path):
    code, out = run(capsys, data_dir / "train.jsonl", data_dir)
    assert code == 0, out
    assert f"{len(RECORDS)} sample(s) parsed: {len(RECORDS)} usable, 0 with problems" in out
    lengths = tmp_path / "lengths.jsonl"
    code, out = run(capsys, data_dir / "train.jsonl", data_dir, "--model", str(checkpoint_dir), "--decode",
                    "--write-lengths", str(lengths))
    assert code == 0, out
    rows = [json.loads(line) for line in lengths.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in RECORDS]


def test_lengths_file_is_the_encoded_length(capsys, data_dir, checkpoint_dir, tmp_path, samples):
    from vl3fast.processing import VideoLLaMA3Processor
    from vl3fast.training import encode_sample

    lengths = tmp_path / "lengths.jsonl"
    run(capsys, data_dir / "train.jsonl", data_dir, "--model", str(checkpoint_dir), "--decode",
        "--write-lengths", str(lengths))
    proc = VideoLLaMA3Processor.from_pretrained(checkpoint_dir)
    got = {r["id"]: (r["tokens"], r["patches"]) for r in map(json.loads, lengths.read_text().splitlines())}
    for s in samples:
        enc = encode_sample(s, proc, data_dir / "media")
        assert got[s.id] == (enc.num_tokens, enc.num_patches)
    # the pruned video is shorter than its header estimate (DiffFP), never longer
    from vl3fast.training import estimate_sample

    vid = next(s for s in samples if s.id == "vid")
    assert got["vid"][0] < estimate_sample(vid, proc, data_dir / "media").length.tokens


def test_tag_count_differs_from_media_count(capsys, data_dir, tmp_path):
    ann = one(tmp_path, {"id": "x", "image": ["a.png", "b.png"],
                         "conversations": [{"from": "human", "value": "<image> what?"}, TEXT_TURNS[1]]})
    code, out = run(capsys, ann, data_dir)
    assert code == 1
    (p,) = problems_of(out)
    assert p.startswith(f"{ann}:1: sample 'x': 1 <image> tag(s) but 2 image(s)")


def test_messages_form_tag_count(capsys, data_dir, tmp_path):
    ann = one(tmp_path, {"id": "m", "messages": [{"role": "user", "content": "<video> and <video>"},
                                                  {"role": "assistant", "content": "ok"}],
                         "videos": [{"path": "w.mp4"}]})
    code, out = run(capsys, ann, data_dir)
    assert code == 1 and "2 <video> tag(s) but 1 video(s)" in out


def test_roles_do_not_alternate(capsys, data_dir, tmp_path):
    ann = one(tmp_path, {"id": "r", "conversations": [TEXT_TURNS[0], TEXT_TURNS[0], TEXT_TURNS[1]]})
    code, out = run(capsys, ann, data_dir)
    assert code == 1
    assert "roles do not alternate: turn 1 is user, expected assistant" in problems_of(out)[0]


def test_no_non_empty_assistant_turn(capsys, data_dir, tmp_path):
    ann = one(tmp_path, {"id": "e", "conversations": [TEXT_TURNS[0], {"from": "gpt", "value": "  "}]})
    code, out = run(capsys, ann, data_dir)
    assert code == 1 and "no non-empty assistant turn" in problems_of(out)[0]


def test_missing_media(capsys, data_dir, tmp_path):
    ann = one(tmp_path, {"id": "g", "image": "nope.png", "conversations": [
        {"from": "human", "value": "<image>"}, TEXT_TURNS[1]]})
    code, out = run(capsys, ann, data_dir)
    assert code == 1
    (p,) = problems_of(out)
    assert p.startswith(f"{ann}:1: sample 'g': ") and "nope.png" in p


def test_media_that_will_not_open(capsys, data_dir, tmp_path):
    (data_dir / "media" / "notes.mp4").write_text("this is not a video\n" * 20)
    ann = one(tmp_path, {"id": "n", "video": ["notes.mp4"], "conversations": [
        {"from": "human", "value": "<video>"}, TEXT_TURNS[1]]})
    code, out = run(capsys, ann, data_dir)
    assert code == 1 and "notes.mp4" in problems_of(out)[0]


def test_decode_finds_what_the_header_probe_cannot(capsys, data_dir, tmp_path):
    from tests.processing._media import write_video

    media = data_dir / "media"
    fast = write_video(media / "fast.mp4", width=64, height=48, fps=10, frames=40, gop=5,
                       container_options={"movflags": "faststart"})
    data = open(fast, "rb").read()  # moov first: the header survives the cut, the frames do not
    (media / "cut.mp4").write_bytes(data[: int(len(data) * 0.4)])
    ann = one(tmp_path, {"id": "c", "video": ["cut.mp4"], "conversations": [
        {"from": "human", "value": "<video>"}, TEXT_TURNS[1]]})
    assert run(capsys, ann, data_dir)[0] == 0  # the header is fine
    code, out = run(capsys, ann, data_dir, "--decode")
    assert code == 1
    assert "sample 'c': media will not decode" in problems_of(out)[0]


def test_sample_over_the_token_budget(capsys, data_dir, checkpoint_dir, tmp_path):
    ann = write_annotations(tmp_path / "ann.jsonl", RECORDS[:1])  # 24 visual tokens, 76 in all
    code, out = run(capsys, ann, data_dir, "--budget", "20")
    assert code == 1 and "24 visual tokens exceed the token budget of 20" in problems_of(out)[0]
    assert run(capsys, ann, data_dir, "--budget", "30")[0] == 0  # visual tokens only without --model
    code, out = run(capsys, ann, data_dir, "--budget", "30", "--model", str(checkpoint_dir))
    assert code == 1 and "76 tokens exceed the token budget of 30" in problems_of(out)[0]


def test_no_supervised_token_after_truncation(capsys, data_dir, checkpoint_dir, tmp_path):
    ann = write_annotations(tmp_path / "ann.jsonl", [RECORDS[3]])  # text only: 41 tokens, the answer is last
    args = ("--model", str(checkpoint_dir), "--max-length")
    assert run(capsys, ann, data_dir, *args, "40")[0] == 0
    code, out = run(capsys, ann, data_dir, *args, "30")
    assert code == 1 and "no supervised token left after truncation to --max-length 30" in problems_of(out)[0]
    code, out = run(capsys, ann, data_dir, *args, "30", "--decode")
    assert code == 1 and "no supervised token left after truncation to max_length=30" in problems_of(out)[0]


def test_truncation_never_cuts_visual_tokens(capsys, data_dir, checkpoint_dir, tmp_path):
    ann = write_annotations(tmp_path / "ann.jsonl", RECORDS[:1])
    code, out = run(capsys, ann, data_dir, "--model", str(checkpoint_dir), "--max-length", "20")
    assert code == 1 and "would cut visual tokens" in problems_of(out)[0]
    code, out = run(capsys, ann, data_dir, "--model", str(checkpoint_dir), "--max-length", "20", "--decode")
    assert code == 1 and "would cut visual tokens" in problems_of(out)[0]


def test_duplicate_ids(capsys, data_dir, tmp_path):
    ann = write_annotations(tmp_path / "ann.jsonl", [RECORDS[3], RECORDS[3]])
    code, out = run(capsys, ann, data_dir)
    assert code == 1
    assert problems_of(out) == [f"{ann}:2: duplicate id 'text' (first at {ann}:1)"]


def test_every_problem_is_listed_with_its_line(capsys, data_dir, tmp_path):
    ann = tmp_path / "ann.jsonl"
    ann.write_text("\n".join([json.dumps(RECORDS[3]), "{not json", "", json.dumps({"id": 5, "conversations": []}),
                              json.dumps({"id": "q", "image": "nope.png", "conversations": [
                                  {"from": "human", "value": "<image>"}, TEXT_TURNS[1]]})]) + "\n")
    code, out = run(capsys, ann, data_dir)
    assert code == 1
    lines = problems_of(out)
    assert [p.split(": ")[0] for p in lines] == [f"{ann}:2", f"{ann}:4", f"{ann}:5"]
    assert "not valid JSON" in lines[0] and "'conversations' must be a non-empty list" in lines[1]
    assert "4 sample(s) parsed: 1 usable, 3 with problems" in out


def test_write_lengths_needs_decode_and_model(capsys, data_dir, tmp_path):
    code = cli.main(["data", "validate", str(data_dir / "train.jsonl"), "--write-lengths", str(tmp_path / "l")])
    assert code == 2
    assert "--write-lengths needs --decode and --model" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_array_files_report_the_line_an_object_starts_on(tmp_path, fmt):
    from vl3fast.training import load_annotations

    bad = {"id": "b", "conversations": [TEXT_TURNS[1], TEXT_TURNS[0]]}
    path = tmp_path / f"ann.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps([RECORDS[3], bad], indent=2))
        line = [i for i, text in enumerate(json.dumps([RECORDS[3], bad], indent=2).splitlines()) if text == "  {"][1] + 1
    else:
        path.write_text(json.dumps(RECORDS[3]) + "\n" + json.dumps(bad) + "\n")
        line = 2
    samples, problems = load_annotations(path)
    assert [s.id for s in samples] == ["text"]
    assert problems and problems[0].startswith(f"{path}:{line}: sample 'b': roles do not alternate")
