"""benchmarks/quality.py's scheduler: rows run side by side; one that runs out of GPU memory
beside others runs once more, alone, after them."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quality  # noqa: E402

FAKE_ROW = """
import sys, time
from pathlib import Path
row, out = sys.argv[1], Path(sys.argv[2])
(out / f"start-{row}").open("a").write(f"{time.time()}\\n")
if row == "sinks" and not (out / "sinks-tried").exists():
    (out / "sinks-tried").touch()
    time.sleep(0.5)
    raise SystemExit("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.55 GiB")
if row == "gate-liger":
    raise SystemExit("ValueError: not a memory error")
time.sleep(1.5)
(out / f"done-{row}").write_text(str(time.time()))
"""


def test_a_row_out_of_memory_beside_others_runs_again_alone(tmp_path, monkeypatch, capsys):
    script = tmp_path / "fake_row.py"
    script.write_text(FAKE_ROW)
    monkeypatch.setattr(quality, "row_command", lambda row, common: [sys.executable, str(script), row, str(tmp_path)])
    monkeypatch.setattr(quality, "cmd_prepare", lambda args: None)
    monkeypatch.setattr(quality, "cmd_report", lambda args: None)
    monkeypatch.setattr(quality.torch.cuda, "device_count", lambda: 1)
    args = argparse.Namespace(out=str(tmp_path), profile="gpu", base="b.yaml", set=[], per_gpu=0,
                              rows=["lolcats", "sinks", "gate-liger", "window"])
    quality.cmd_all(args)
    out = capsys.readouterr().out
    assert "sinks: out of GPU memory beside other rows; runs again alone after them" in out
    assert (tmp_path / "done-sinks").exists()
    starts = (tmp_path / "start-sinks").read_text().split()
    assert len(starts) == 2  # once with the others, once more
    others_done = max(float((tmp_path / f"done-{r}").read_text()) for r in ("lolcats", "window"))
    assert float(starts[1]) >= others_done  # alone: after every other row ended
    assert "gate-liger: exit 1" in out and "gate-liger: out of GPU memory" not in out  # other errors: no rerun
    assert len((tmp_path / "start-gate-liger").read_text().split()) == 1
    assert "OutOfMemoryError" in (tmp_path / "log-sinks.txt").read_text()  # the first attempt's log is kept


def test_training_free_rows_use_the_window_of_the_trained_rows():
    """A baseline at a narrower window than the trained rows would flatter them."""
    for base, window in (("configs/smollm2-135m.yaml", 64), ("configs/qwen2.5-0.5b.yaml", 256)):
        args = argparse.Namespace(base=base, profile="gpu", out="/tmp/unused", set=[])
        cfgs = {row: quality._cfg(row, args) for row in ("window", "window-sinks", "lolcats", "sinks-gate")}
        assert {c.linearize.window for c in cfgs.values()} == {window}, base
        assert (cfgs["window"].linearize.sinks, cfgs["window-sinks"].linearize.sinks) == (0, 4)
        assert not cfgs["window-sinks"].stage1.enabled and cfgs["lolcats"].stage1.enabled


def test_the_report_compares_trained_rows_with_the_training_free_baseline(tmp_path):
    """results.md holds a second table against `window-sinks`, where a code difference the
    independent standard errors call a tie is resolved per problem."""
    import json

    ids = [f"HumanEval/{i}" for i in range(164)]

    def row(passed: range, trained: bool) -> dict:
        p = len(passed) / 164
        code = {"pass@1": p, "stderr": (p * (1 - p) / 164) ** 0.5, "n": 164,
                "problems": [{"task_id": t, "status": "passed" if i in passed else "failed"} for i, t in enumerate(ids)]}
        stage = {"tokens": 1024 if trained else 0, "trainable_parameters": 10 if trained else 0, "seconds": 1.0}
        return {"stage1": stage, "stage2": stage, "report": {"code": {"humaneval": code}}}

    for name, passed, trained in (("window-sinks", range(76), False), ("lolcats", range(90), True)):
        (tmp_path / f"row-{name}.json").write_text(json.dumps(row(passed, trained)))
    (tmp_path / "row-teacher.json").write_text(json.dumps({"report": row(range(92), False)["report"]}))
    args = argparse.Namespace(out=str(tmp_path), base="configs/qwen2.5-0.5b.yaml", profile="gpu", set=[],
                              rows=["teacher", "window-sinks", "lolcats"], per_gpu=1, elapsed=1.0)
    quality.cmd_report(args)
    text = (tmp_path / "results.md").read_text()
    first, second = text.split("Against the training-free `window-sinks` row:")
    assert "| humaneval (pass@1) | 56.10 ± 3.88 | 54.88 ± 3.89 (0.978x, tie) | 46.34 ± 3.89 (0.826x) |" in first
    assert "| humaneval (pass@1) | 46.34 ± 3.89 | 54.88 ± 3.89 (1.184x) |" in second  # 14 more, none fewer
