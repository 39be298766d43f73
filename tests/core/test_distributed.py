"""Both stages under torchrun with 2 CPU processes (gloo) equal the single-process run; a killed
rank ends the run and a re-run resumes. The stages run in tests/distributed_worker.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distributed_worker import run
from helpers import descendant_pids
from lolcats_core.distributed import layer_blocks
from lolcats_core.training.blockwise import layer_costs

WORKER = Path(__file__).parents[1] / "distributed_worker.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LOLCATS_DIST_TIMEOUT_S": "30"}


def _launch(stage: str, out: Path, *args: str) -> subprocess.Popen:
    cmd = TORCHRUN + [str(WORKER), stage, str(out), *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _single(stage: str, out: Path, steps: int = 4, grad_accum: int = 1) -> dict[str, torch.Tensor]:
    """The same stage in this process (no torchrun)."""
    run(stage, out, steps, grad_accum)
    return load_file(out / "params.safetensors")


def _assert_close(single: dict, multi: dict, atol: float) -> None:
    assert single.keys() == multi.keys() and single
    worst = max(((single[k].double() - multi[k].double()).abs().max().item(), k) for k in single)
    assert worst[0] <= atol, worst


def test_layer_blocks_are_contiguous_and_balanced():
    assert layer_blocks([1.0] * 5, 2) == [range(0, 2), range(2, 5)]
    assert layer_blocks([1.0] * 80, 8) == [range(10 * i, 10 * i + 10) for i in range(8)]
    # kept softmax layers cost less: layers 0-3 are softmax, so block 0 takes more of them
    assert layer_blocks(layer_costs(8, range(4, 8)), 2) == [range(0, 5), range(5, 8)]
    with pytest.raises(Exception, match="at most 2 ranks"):
        layer_blocks([1.0, 1.0], 3)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    """One torchrun launch (2 ranks, one process group) running stage 1 block-wise, stage 2 data
    parallel and stage 2 sharded (2 accumulation steps x 2 rows per rank), then `memory`, each
    from its own files under OUT/<stage>/: OUT. Start-up is most of a launch's time."""
    out = tmp_path_factory.mktemp("multi")
    proc = _launch("transfer,lora:2,fsdp:2,memory", out)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-3000:]
    return out


@pytest.fixture(scope="module")
def single_stage2(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Stage 2 in this process with 4 accumulation steps: the reference of both the data-parallel
    and the sharded runs (single-process, `fsdp` is `lora`)."""
    return _single("lora", tmp_path_factory.mktemp("single"), grad_accum=4)


@pytest.mark.slow
def test_blockwise_stage1_equals_the_single_process_run(multi, tmp_path):
    """4 layers (layer 1 kept softmax) in blocks 0-1 and 2-3: per-layer MSE and every trained
    feature-map and gate weight equal the single-process run's."""
    single = _single("transfer", tmp_path / "single")
    assert {k for k in single if k.startswith("mse.")} == {"mse.0", "mse.2", "mse.3"}
    _assert_close(single, load_file(multi / "transfer" / "params.safetensors"), atol=1e-6)


SKEWS = [  # the trainer states ranks 0 and 1 hold ({"last" | "last.tmp" | "broken": step}), and the common step
    # killed before every rank had written step 4: both resume at 2
    ([{"last": 2, "last.tmp": 4}, {"last": 2, "broken": 4}], [2]),
    # killed after some rank committed step 4: every rank holds it (at last or last.tmp)
    ([{"last": 4}, {"last": 2, "last.tmp": 4}], [4]),
    # killed during the first commit: no step in common, both start afresh
    ([{"last.tmp": 2}, {"broken": 2}], []),
]


def _align(rank: int, folder: Path) -> None:
    """Rank `rank` of 2 (gloo): for each of SKEWS, save its trainer states, align, and record
    the steps its `last` holds then and what is left in the folder."""
    import torch.distributed as dist

    from lolcats_core.distributed import Ranks
    from lolcats_core.training.blockwise import align_resume
    from lolcats_core.training.state import save_train_state, saved_states

    dist.init_process_group("gloo", init_method=f"file://{folder / 'pg'}", rank=rank, world_size=2)
    param = torch.nn.Parameter(torch.zeros(2))
    results = []
    for case, (states, _) in enumerate(SKEWS):
        last = folder / f"case-{case}" / f"block-{rank}" / "last"
        for where, step in states[rank].items():
            path = last if where == "last" else last.with_name("last.tmp")
            save_train_state(path, {"p": param}, torch.optim.SGD([param]), None, {"step": step})
            if where == "broken":  # killed while writing: state.json is written last
                (path / "state.json").unlink()
        align_resume(last, Ranks(rank, 2, rank))
        results.append([sorted(saved_states(last)), sorted(p.name for p in last.parent.iterdir())])
    (folder / f"result-{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def test_blockwise_ranks_resume_at_the_newest_common_step(tmp_path):
    """Ranks resuming at different steps would wait on each other's micro-batches for ever."""
    torch.multiprocessing.spawn(_align, args=(tmp_path,), nprocs=2)
    for rank in range(2):
        results = json.loads((tmp_path / f"result-{rank}.json").read_text())
        assert results == [[common, ["last"] if common else []] for _, common in SKEWS]


@pytest.mark.slow
def test_data_parallel_stage2_equals_the_single_process_run_at_the_same_global_batch(multi, single_stage2):
    """2 ranks x 2 accumulation steps x 2 rows against one process with 4 accumulation steps.
    Sums in another order differ by fp32 rounding, which Adam's first steps can amplify in
    elements whose gradients are near zero (lora_A after a zero lora_B): atol 1e-5 on values ~0.1."""
    _assert_close(single_stage2, load_file(multi / "lora" / "params.safetensors"), atol=1e-5)


@pytest.mark.slow
def test_fsdp_stage2_equals_the_single_process_run_at_the_same_global_batch(multi, single_stage2):
    """FSDP2 (frozen weights sharded over 2 gloo ranks, LoRA replicated), 2 ranks x 2 accumulation
    steps x 2 rows against one process with 4 accumulation steps: held-out losses and LoRA
    weights within fp32 tolerance (as for DDP)."""
    single = {k: v for k, v in single_stage2.items() if k == "eval_loss" or "lora_" in k}  # what FSDP saves
    assert len(single["eval_loss"]) == 2 and any(k.endswith("lora_B.default.weight") for k in single)
    _assert_close(single, load_file(multi / "fsdp" / "params.safetensors"), atol=1e-5)


@pytest.mark.slow
def test_each_rank_materialises_only_its_share_of_the_base_model(multi):
    """Under torchrun a rank reads only what it uses from the model's files, the rest of its
    model staying on the meta device: for block-wise stage 1 its block of layers (rank 0 also
    the token embeddings; nobody the final norm or the output head), for sharded stage 2
    nothing on ranks > 0 until rank 0's weights fill their shards, half of every tensor each."""
    from transformers import AutoModelForCausalLM

    ranks = [json.loads((multi / "memory" / f"materialised-{r}.json").read_text()) for r in range(2)]
    whole = AutoModelForCausalLM.from_pretrained(multi / "memory" / "base")
    sizes: dict[str, int] = {}
    for name, p in whole.named_parameters():
        part = ".".join(name.split(".")[:3 if name.startswith("model.layers.") else 2])
        sizes[part] = sizes.get(part, 0) + p.numel()
    layers = {r: {f"model.layers.{i}": sizes[f"model.layers.{i}"] for i in block}
              for r, block in enumerate([range(0, 2), range(2, 4)])}
    assert ranks[0]["transfer"] == {"model.embed_tokens": sizes["model.embed_tokens"], **layers[0]}
    assert ranks[1]["transfer"] == layers[1]
    loaded = ranks[0]["fsdp_loaded"]  # the linearized model: base weights and feature maps
    assert loaded.keys() == sizes.keys() - {"lm_head"} and ranks[1]["fsdp_loaded"] == {}  # lm_head: tied
    for part, total in loaded.items():
        assert ranks[0]["fsdp_sharded"][part] + ranks[1]["fsdp_sharded"][part] == total
        assert ranks[0]["fsdp_sharded"][part] == ranks[1]["fsdp_sharded"][part]


def _worker_pid(launcher: int, rank: int) -> int:
    for pid in descendant_pids(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b" ".join(environ):
            return pid
    raise AssertionError(f"no rank {rank} under {launcher}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["lora", "fsdp"])
def test_a_killed_rank_ends_the_run_and_a_rerun_resumes(stage, tmp_path):
    """DDP, and FSDP2 (whose ranks > 0 build the model on the meta device and take rank 0's
    weights again on the re-run): the resumed run ends where the single process does."""
    out, args = tmp_path / "run", ("--steps", "12", "--grad-accum", "2")
    proc = _launch(stage, out, *args)
    state = out / "trainer" / "last" / "state.json"
    deadline = time.monotonic() + 180
    while not state.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)  # no hang: rank 0 stops and torchrun reports rank 1
    assert proc.returncode != 0
    assert "Root Cause" in output and "rank      : 1" in output and "SIGKILL" in output, output[-3000:]
    assert not (out / "params.safetensors").exists()

    rerun = _launch(stage, out, *args)
    output, _ = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, output[-3000:]
    assert "LoRA adjustment: resuming at step" in output
    single = _single(stage, tmp_path / "single", steps=12, grad_accum=4)
    _assert_close(single, load_file(out / "params.safetensors"), atol=1e-5)


@pytest.mark.slow
def test_torchrun_cli_trains_both_stages_into_the_single_process_checkpoint(smollm2_dir, tmp_path):
    """`torchrun -m lolcats_core.cli train` on a tiny model with the SmolLM2 tokenizer: the
    gathered stage-1 checkpoint holds the single-process run's weights; stage 2 then runs data
    parallel with its weights sharded (FSDP2), counting tokens over both ranks, and rank 0 saves
    the usual checkpoint with the best LoRA weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import make_tiny_config
    from lolcats_core.cli import main

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(make_tiny_config(num_hidden_layers=4, vocab_size=len(tok))).save_pretrained(base)
    tok.save_pretrained(base)
    config = tmp_path / "run.yaml"
    config.write_text(f"name: tiny\nmodel: {base}\ndevice: cpu\noutput_dir: {tmp_path / 'runs'}\n"
                      "linearize: {window: 4, feature_dim: 16, softmax_layers: [1]}\n"
                      f"data: {{seq_len: 64, train_tokens: 1024, val_tokens: 256, cache_dir: {tmp_path / 'data'}}}\n"
                      "stage1: {batch_size: 2, max_steps: 3, eval_every: 1}\n"
                      "stage2: {batch_size: 1, max_steps: 2, eval_every: 1, lora: {r: 4, alpha: 8}}\n")
    records = []
    for stage in ("1", "2"):
        result = subprocess.run(TORCHRUN + ["-m", "lolcats_core.cli", "train", "--stage", stage, "--config", str(config),
                                            "--set", "distributed.stage2=fsdp"],
                                env=ENV, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("lolcats-eval ") == (3 if stage == "1" else 2)  # one line per evaluation
        records.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert [r["step"] for r in records] == ["attention_transfer", "lora_adjust"]
    assert records[1]["tokens"] == 2 * 1 * 2 * 64  # steps x micro-batch x ranks x seq_len
    assert json.loads((Path(records[1]["dir"]) / "done.json").read_text())["parallel"] == "fsdp"
    best = load_file(Path(records[1]["dir"]) / "trainer" / "best.safetensors")
    saved = load_file(Path(records[1]["model"]) / "model.safetensors")
    assert best and all(torch.equal(saved["lora::" + k.replace(".default.", ".")], v) for k, v in best.items())
    assert main(["train", "--stage", "1", "--config", str(config), "--set", f"output_dir={tmp_path / 'single'}"]) == 0
    same_dir = tmp_path / "single" / "tiny" / Path(records[0]["dir"]).name  # the fingerprint ignores the rank count
    single = load_file(same_dir / "model" / "model.safetensors")
    _assert_close(single, load_file(Path(records[0]["model"]) / "model.safetensors"), atol=1e-6)


@pytest.mark.slow
def test_a_failed_torchrun_launch_raises_the_ranks_error(tiny_model_dir, tmp_path):
    """The service's launcher (`lolcats_core.launch`): ranks that fail (here: the base model is
    gone when they load the config) end in a LaunchError quoting their error and torchrun's first
    failure; every line they printed went to on_line."""
    import shutil

    from lolcats_core.launch import LaunchError, torchrun_stage
    from lolcats_core.run_config import load_run_config

    cfg = load_run_config(tree={"name": "gone", "model": str(tiny_model_dir), "device": "cpu",
                                "output_dir": str(tmp_path / "runs"), "distributed": {"gpus": 2}})
    shutil.rmtree(tiny_model_dir)
    lines = []
    with pytest.raises(LaunchError, match=r"(?s)stage 1 failed under torchrun \(2 processes, exit code 1\): "
                                          r"model: .* is not a preset.*\[first failure: rank \d \(local_rank: \d\); "
                                          r"exitcode 2 \(pid: \d+\)\]"):
        torchrun_stage(cfg, 1, tmp_path / "runs" / "gone" / "stage1-x", on_line=lines.append)
    assert any(line.startswith("lolcats train: error: model:") for line in lines)
