"""A small stage 1 on passkey-only data on the CPU, for the needle probes (docs/results.md).

Runs the recipe's attention transfer (configs/smollm2-135m.yaml, cpu-smoke profile) on
`data.mix={passkey: 1.0}` rows of 1024 tokens and prints the checkpoint, which
`needle_capacity.py --student CKPT [--own-states]` then measures. `--forcing student` lets each
layer's student output (detached) flow on to the next layer instead of the teacher's, so that
every layer is fitted to softmax attention on the linearized model's own hidden states.

    python benchmarks/stage1_passkey_cpu.py --out /tmp/s1 [--forcing student]   # ~7 min on 2 cores
"""

import argparse

from lolcats_core.attention import LolcatsAttention
from lolcats_core.pipeline import attention_transfer_step, prepare_data
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
    ap.add_argument("--steps", type=int, default=150, help="steps of one 1024-token row")
    args = ap.parse_args()
    if args.forcing == "student":
        LolcatsAttention._attention_transfer = student_forced(LolcatsAttention._attention_transfer)
    cfg = load_run_config("configs/smollm2-135m.yaml", "cpu-smoke", [
        f"output_dir={args.out}", f"name=stage1-passkey-{args.forcing}", "data.mix={passkey: 1.0}",
        "data.seq_len=1024", f"data.train_tokens={(args.steps + 50) * 1024}", "data.val_tokens=2048",
        f"data.cache_dir={args.out}/data", f"stage1.tokens={args.steps * 1024}", "stage1.batch_size=1",
        "stage1.eval_every=50"])
    record = attention_transfer_step(cfg, prepare_data(cfg))
    print(f"stage 1 ({args.forcing} forcing): {record['seconds']} s, held-out MSE "
          f"{record['history'][-1]['eval_score']:.4f}; checkpoint {record['model']}")


if __name__ == "__main__":
    main()
