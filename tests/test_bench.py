"""The main job runs every stage end to end and its vl3fast paths agree with the references."""
import json

from vl3fast import bench
from vl3fast.cli import main


def test_bench_stages_agree_and_report_pruning(tmp_path):
    batch = bench.synthetic_batch(frames=3)
    started = []
    results, report = bench.run(batch, repeats=1, layers=1, on_stage=started.append)
    assert started == [r.stage for r in results] and len(started) == bench.NUM_STAGES
    assert [r.stage.split(" ")[0] for r in results] == [
        "processing", "position", "frame", "attention", "attention", "vision", "vision"]
    assert all(r.agree for r in results), bench.format_table(results)
    assert report.tokens_before == 3 * 144 + 768 + 688
    assert report.tokens_before > report.tokens_after >= 144 + 2 + 768 + 688  # frame 0 and images are kept
    out = tmp_path / "bench.json"
    out.write_text(bench.to_json(results, batch, report, 1))
    assert json.loads(out.read_text())["pruning"]["tokens_after"] == report.tokens_after


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--frames", "2", "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Frame pruning report" in printed and "vision encoder float32" in printed
    assert len(json.loads(out.read_text())["stages"]) == 7
