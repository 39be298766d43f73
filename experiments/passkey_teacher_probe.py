"""The teacher on passkey prompts of the evaluation's cells, at other prompt lengths (CPU).

Each (length, depth) cell of `passkey_retrieval` draws its keys and haystack offsets from
`Random(f"passkey-{seed}-{length}-{depth}")`; this probe draws them as the cell `--cell-length`
does but builds prompts of `--lengths` tokens, so the same keys and haystacks are asked at other
distances. It told apart the two readings of the teacher's miss at 8192 tokens, depth 0: the
answer generated past SmolLM2's 8192 positions, or the needle too far back (docs/results.md).

    python experiments/passkey_teacher_probe.py --depths 0 --lengths 8192,8184,8000,7000  # ~3 min
"""

import argparse
import random
import re

import torch
from transformers import GenerationConfig

from lolcats_core.data.passkey import PasskeyGenerator
from lolcats_core.presets import load_base_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cell-length", type=int, default=8192, help="the evaluation cell whose keys are drawn")
    ap.add_argument("--depths", default="0")
    ap.add_argument("--lengths", default="8192,8184,8000,7000", help="prompt lengths to ask them at")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model, tokenizer, _ = load_base_model(args.model, dtype=torch.float32, device="cpu")
    generator = PasskeyGenerator(tokenizer)
    eos = tokenizer.eos_token_id
    for depth in (float(d) for d in args.depths.split(",")):
        for length in (int(n) for n in args.lengths.split(",")):
            rng = random.Random(f"passkey-{args.seed}-{args.cell_length}-{depth}")
            for sample in (generator.sample(length, depth, rng) for _ in range(args.trials)):
                ids = torch.tensor([sample.input_ids])
                config = GenerationConfig(max_new_tokens=len(sample.answer_ids) + 2, do_sample=False,
                                          eos_token_id=eos, pad_token_id=eos)
                with torch.no_grad():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
                text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
                number = re.search(r"\d+", text)
                verdict = "correct" if number is not None and number.group() == sample.key else "wrong"
                print(f"depth {depth:.2f}, {length} tokens, key {sample.key}: {text!r} -> {verdict}", flush=True)


if __name__ == "__main__":
    main()
