"""A small recipe on passkey-only data on the CPU, for the needle probes (docs/results.md).

Runs the recipe's attention transfer (configs/smollm2-135m.yaml, cpu-smoke profile) on
`data.mix={passkey: 1.0}` rows of 1024 tokens and prints the checkpoint, which
`needle_capacity.py --student CKPT [--own-states]` then measures. `--forcing student` lets each
layer's student output (detached) flow on to the next layer instead of the teacher's, so that
every layer is fitted to softmax attention on the linearized model's own hidden states.
`--stage2-steps N` adds a LoRA adjustment on the same rows and `--passkey` scores the last
checkpoint on passkey prompts (lengths of `--passkey`, 5 depths x 2 trials); `--set key=value`
overrides the config (e.g. `linearize.softmax_layers=[18,20,21,23]`).

    python experiments/stage1_passkey_cpu.py --out /tmp/s1 [--forcing student]   # ~7 min on 2 cores
    python experiments/stage1_passkey_cpu.py --out /tmp/s2 --stage2-steps 120 --passkey 1024,2048
"""

import argparse
import json

from lolcats_core.attention import LolcatsAttention
from lolcats_core.pipeline import attention_transfer_step, evaluate_step, lora_step, prepare_data
from lolcats_core.run_config import load_run_config


def student_forced(transfer):
    """`LolcatsAttention._attention_transfer` returning the student's output (detached), which
    it hands to the layer's transfer hook, instead of the teacher's."""
    def forward(self, q, k, v):
        hook, seen = self.transfer_hook, {}
        self.transfer_hook = lambda module, student, teacher: (seen.update(student=student),
                                                                hook(module, student, teacher))
        try:
            transfer(self, q, k, v)
        finally:
            self.transfer_hook = hook
        return seen["student"].detach()
    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--forcing", choices=["teacher", "student"], default="teacher")
    ap.add_argument("--steps", type=int, default=150, help="stage-1 steps of one 1024-token row")
    ap.add_argument("--stage2-steps", type=int, default=0, help="LoRA steps of one row after stage 1")
    ap.add_argument("--stage2-lr", type=float, default=1e-3, help="above the recipe's 1e-4 for few steps")
    ap.add_argument("--passkey", default="", help="comma-separated prompt lengths to score at the end")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if args.forcing == "student":
        LolcatsAttention._attention_transfer = student_forced(LolcatsAttention._attention_transfer)
    steps = args.steps + args.stage2_steps
    cfg = load_run_config("configs/smollm2-135m.yaml", "cpu-smoke", [
        f"output_dir={args.out}", f"name=stage1-passkey-{args.forcing}", "data.mix={passkey: 1.0}",
        "data.seq_len=1024", f"data.train_tokens={(steps + 50) * 1024}", "data.val_tokens=2048",
        f"data.cache_dir={args.out}/data", f"stage1.tokens={args.steps * 1024}", "stage1.batch_size=1",
        "stage1.eval_every=50", f"stage2.tokens={args.stage2_steps * 1024}", "stage2.batch_size=1",
        "stage2.eval_every=40", f"stage2.lr={args.stage2_lr}", "eval.tasks=[]", "eval.perplexity=false",
        f"eval.passkey_lengths=[{args.passkey}]", "eval.passkey_depths=[0.0,0.25,0.5,0.75,1.0]",
        "eval.passkey_trials=2", *args.overrides])
    data = prepare_data(cfg)
    record = attention_transfer_step(cfg, data)
    print(f"stage 1 ({args.forcing} forcing, softmax layers {record['softmax_layers']}): {record['seconds']} s, "
          f"held-out MSE {record['history'][-1]['eval_score']:.4f}; checkpoint {record['model']}", flush=True)
    if args.stage2_steps:
        record = lora_step(cfg, data, record)
        print(f"stage 2: {record['seconds']} s, held-out loss {record['history'][-1]['eval_score']:.4f}; "
              f"checkpoint {record['model']}", flush=True)
    if args.passkey:
        report = evaluate_step(cfg, data, record["model"], "student")["report"]["passkey"]
        print("passkey accuracy by length:", report["by_length"])
        print(json.dumps(report["predictions"], indent=1))


if __name__ == "__main__":
    main()
