"""Quality benchmark: training-free baselines, the LoLCATs recipe, its ablations and its sink and
gate variants, on the same data, budget and evaluation.

    python benchmarks/quality.py all --out DIR [--base configs/qwen2.5-0.5b.yaml] [--profile gpu]
        [--rows teacher window lolcats ...] [--set key=value ...]

Prepares the data once (`prepare` alone does only that), evaluates the teacher once, runs every
row (stage 1, stage 2, student evaluation) as a separate process — dealt round-robin to the
visible GPUs, at most --per-gpu at a time on each (default 1; a row that runs out of GPU
memory beside others runs once more, alone, after them) — then writes DIR/results.md
(every row against the teacher, the trained rows against the strongest training-free row,
tokens, trainable parameters, wall time per stage, device, command) beside each row's full
record, DIR/row-ROW.json. Rows: the files configs/ablations/ROW.yaml, each laid over the --base config
(the model's own config and profiles); the teacher is evaluated with the `lolcats` row's data.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ROWS = sorted(p.stem for p in (ROOT / "configs" / "ablations").glob("*.yaml"))
ALL = ["teacher", *ROWS]
BASELINES = ("window-sinks", "window")  # training-free rows, the strongest first


def _cfg(row: str, args):
    from lolcats_core.run_config import load_run_config, read_overlay

    tree = read_overlay(ROOT / "configs" / "ablations" / f"{row}.yaml", Path(args.base))
    return load_run_config(None, args.profile, [f"output_dir={args.out}/runs", *args.set], tree=tree)


def cmd_row(args) -> None:
    from lolcats_core.pipeline import attention_transfer_step, evaluate_step, lora_step, prepare_data

    cfg = _cfg(args.row, args)
    data = prepare_data(cfg)
    stage1 = attention_transfer_step(cfg, data)
    stage2 = lora_step(cfg, data, stage1)
    student = evaluate_step(cfg, data, stage2["model"], args.row)
    out = {"row": args.row, "stage1": stage1, "stage2": stage2, "report": student["report"]}
    (Path(args.out) / f"row-{args.row}.json").write_text(json.dumps(out, default=str))


def cmd_teacher(args) -> None:
    from lolcats_core.pipeline import evaluate_step, prepare_data

    cfg = _cfg("lolcats", args)
    data = prepare_data(cfg)
    teacher = evaluate_step(cfg, data, None, "teacher")
    (Path(args.out) / "row-teacher.json").write_text(json.dumps({"report": teacher["report"]}, default=str))


def cmd_report(args) -> None:
    from lolcats_core.evaluation import comparison_table

    out = Path(args.out)
    rows = {}
    for row in ALL:
        path = out / f"row-{row}.json"
        if path.exists():
            rows[row] = json.loads(path.read_text())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    cmd = f"python benchmarks/quality.py all --out OUT --base {args.base} --profile {args.profile}" + "".join(
        f" --set {s}" for s in args.set) + ("" if args.rows == ALL else " --rows " + " ".join(args.rows)) + (
        f" --per-gpu {args.per_gpu}" if args.per_gpu != 1 else "")
    lines = ["| row | stage-1 tokens | stage-2 tokens | stage-1 trainable | stage-2 trainable | "
             "stage-1 s | stage-2 s |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if name == "teacher":
            continue
        s1, s2 = r["stage1"], r["stage2"]
        lines.append(f"| {name} | {s1['tokens']:,} | {s2['tokens']:,} | {s1['trainable_parameters']:,} | "
                     f"{s2['trainable_parameters']:,} | {s1['seconds']} | {s2['seconds']} |")
    if not rows:
        raise SystemExit(f"no finished rows under {out} (see the log-*.txt files)")
    reports = {k: v["report"] for k, v in rows.items()}
    text = "\n".join([
        comparison_table(reports), "", *baseline_table(reports), *lines, "",
        f"device: {device}; torch {torch.__version__}; wall time of the whole benchmark "
        f"{args.elapsed:.0f} s (rows {' '.join(args.rows)} over {max(torch.cuda.device_count(), 1)} device(s), "
        f"{args.per_gpu or 'all'} at a time per device)", "",
        f"command: `{cmd}`"])
    (out / "results.md").write_text(text + "\n")
    print(text)


def baseline_table(reports: dict) -> list[str]:
    """Lines of a second table: the trained rows against the strongest training-free row
    present (`window-sinks`, else `window`), the baseline a linearization has to beat; none
    when there is no baseline or no trained row."""
    from lolcats_core.evaluation import comparison_table

    base = next((r for r in BASELINES if r in reports), None)
    trained = {k: v for k, v in reports.items() if k not in ("teacher", *BASELINES)}
    if base is None or not trained:
        return []
    return [f"Against the training-free `{base}` row:", "", comparison_table({base: reports[base], **trained}), ""]


def cmd_prepare(args) -> None:
    from lolcats_core.pipeline import prepare_data

    Path(args.out).mkdir(parents=True, exist_ok=True)
    prepare_data(_cfg("lolcats", args))


def _queues(rows: list[str], gpus: int) -> list[list[str]]:
    """Rows dealt round-robin to `gpus` queues (one queue when there is no or one GPU)."""
    return [rows[g::max(gpus, 1)] for g in range(max(gpus, 1))]


def row_command(row: str, common: list[str]) -> list[str]:
    """The command line of one row's process (this script in mode `row` or `teacher`)."""
    argv = [sys.executable, __file__, "teacher" if row == "teacher" else "row"]
    return argv + ([] if row == "teacher" else ["--row", row]) + common


def ran_out_of_memory(log: Path) -> bool:
    """The row's log ends in a CUDA out-of-memory error."""
    return "OutOfMemoryError" in log.read_text(errors="replace")[-20000:]


def cmd_all(args) -> None:
    start = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on `timeout`
    cmd_prepare(args)  # once, before the concurrent rows read it
    common = ["--out", args.out, "--profile", args.profile, "--base", args.base] + [
        x for s in args.set for x in ("--set", s)]
    gpus = torch.cuda.device_count()
    queues = _queues(list(args.rows), gpus)
    limit = args.per_gpu or len(args.rows)
    running: dict[str, tuple[subprocess.Popen, object, int]] = {}
    alone: list[list[str]] = [[] for _ in queues]  # rows that ran out of memory beside others
    retried: set[str] = set()

    def launch(row: str, gpu: int) -> None:
        env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        log = open(Path(args.out) / f"log-{row}.txt", "a" if row in retried else "w")
        argv = row_command(row, common)
        running[row] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log, gpu)
        print(f"{row}: started" + (f" on GPU {gpu}" if gpus else ""), flush=True)

    try:
        while any(queues) or any(alone) or running:
            for gpu, queue in enumerate(queues):
                while queue and sum(1 for *_, g in running.values() if g == gpu) < limit:
                    launch(queue.pop(0), gpu)
                if alone[gpu] and not queue and not any(g == gpu for *_, g in running.values()):
                    launch(alone[gpu].pop(0), gpu)
            for row, (proc, log, gpu) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[row]
                    print(f"{row}: exit {proc.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
                    crowded = any(g == gpu for *_, g in running.values()) or queues[gpu]
                    if proc.returncode and crowded and row not in retried and ran_out_of_memory(Path(log.name)):
                        retried.add(row)  # once: its finished stages are cached, it resumes
                        alone[gpu].append(row)
                        print(f"{row}: out of GPU memory beside other rows; runs again alone after them", flush=True)
            time.sleep(1)
    finally:  # a timeout or Ctrl-C on this driver stops the rows too
        for proc, _, _ in running.values():
            proc.terminate()
    args.elapsed = time.perf_counter() - start
    cmd_report(args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["all", "prepare", "row", "teacher", "report"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--row", choices=ROWS)
    ap.add_argument("--profile", default="gpu")
    ap.add_argument("--base", default=str(ROOT / "configs" / "smollm2-135m.yaml"),
                    help="the model's config, under every row (default: configs/smollm2-135m.yaml)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--per-gpu", type=int, default=1,
                    help="processes at a time per GPU (0: every row at once; two gpu-profile trainings of "
                         "~39 GiB each do not fit one 80 GiB GPU beside an evaluation); with several GPUs "
                         "the rows are dealt round-robin to them, in --rows order")
    ap.add_argument("--rows", nargs="+", choices=ALL, default=ALL,
                    help="rows to run (default: the teacher's evaluation and every row)")
    args = ap.parse_args()
    args.elapsed = 0.0
    modes = {"all": cmd_all, "prepare": cmd_prepare, "row": cmd_row, "teacher": cmd_teacher, "report": cmd_report}
    modes[args.mode](args)


if __name__ == "__main__":
    main()
