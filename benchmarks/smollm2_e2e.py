"""SmolLM2-135M end to end: training-step time and generation throughput, kernels vs PyTorch path.

Times, for the linearized SmolLM2 (all 30 layers, window 64, Hedgehog f=64) in bf16:
a stage-1 step (teacher-forced attention transfer, per-layer backward), a stage-2 step (LoRA,
next-token loss) at batch x seq_len tokens, and greedy generation at a few batch sizes; once
with the Triton kernels and once with `LOLCATS_KERNELS=torch` (the chunked PyTorch path).
Writes OUT/smollm2_e2e.json; `--profile` also writes the torch.profiler tables of both steps
(top kernels by GPU time, and the step's CPU vs GPU time) to OUT/profile_<path>.txt.

    python benchmarks/smollm2_e2e.py --out OUT            # GPU
    python benchmarks/smollm2_e2e.py --out OUT --tiny --device cpu --paths torch   # smoke test
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lolcats_core import LinearizeConfig, LoraSettings, add_lora, linearize
from lolcats_core.training.finetune import next_token_loss
from lolcats_core.training.transfer import attention_state_names, transfer_mode


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def profile_table(fn, device) -> str:
    """Profiler summary of 3 calls of `fn` (after the warm-up done by `timed`)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            fn()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)


def load(tiny: bool, dtype, device):
    if tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        from lolcats_core.presets import smollm2_dir

        model = AutoModelForCausalLM.from_pretrained(smollm2_dir())
    linearize(model, LinearizeConfig(window=64, feature_dim=64))
    return model.to(device=device, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--gen-batches", default="1,64,256")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--paths", default="triton,torch")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="write profiler tables of the two steps")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load(args.tiny, dtype, device)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq_len), device=device)
    batch = {"input_ids": ids, "labels": ids}
    tokens = args.batch * args.seq_len
    results = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.paths.split(","):
        os.environ["LOLCATS_KERNELS"] = path  # read by the dispatcher at every call
        attention_state_names(model)

        def stage1():
            with torch.no_grad(), transfer_mode(model, train=True):
                model.model(input_ids=ids)

        s1 = timed(stage1, device, args.repeat)
        tables = [f"stage 1 step, batch {args.batch} x {args.seq_len}\n{profile_table(stage1, device)}"] if args.profile else []
        peft_model = add_lora(model, LoraSettings())

        def stage2():
            loss, _ = next_token_loss(peft_model, batch, device)
            loss.backward()

        s2 = timed(stage2, device, args.repeat)
        if args.profile:
            tables.append(f"stage 2 step, batch {args.batch} x {args.seq_len}\n{profile_table(stage2, device)}")
            (out / f"profile_{path}.txt").write_text("\n\n".join(tables) + "\n")
        model = peft_model.unload()
        row = {"path": path, "stage1_step_s": round(s1, 4), "stage1_tokens_per_s": round(tokens / s1),
               "stage2_step_s": round(s2, 4), "stage2_tokens_per_s": round(tokens / s2), "generate": []}
        for b in map(int, args.gen_batches.split(",")):
            prompt = torch.randint(3, model.config.vocab_size, (b, 128), device=device)

            def gen():
                with torch.no_grad():
                    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

            seconds = timed(gen, device, 1)
            row["generate"].append({"batch": b, "tokens_per_s": round(b * args.new_tokens / seconds)})
        results.append(row)
        print(json.dumps(row), flush=True)
    (out / "smollm2_e2e.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
