"""Can a Hedgehog feature map of size f reproduce a retrieval head? (CPU, minutes)

The linearized SmolLM2 retrieves a passkey only from its 64-token window. This probe asks
whether the hybrid attention *can* put the teacher's attention mass on a needle thousands of
tokens back, independently of the training recipe: it takes one retrieval layer of the teacher
(`lolcats retrieval-layers`: layer 21), captures its queries and keys (after RoPE) on passkey
prompts, fits the hybrid attention's feature maps and gates of that layer directly to the
teacher's attention distributions (KL over the keys of sampled queries and of the last prompt
position, which predicts the answer), and reports on held-out prompts how much of the last
position's attention the fitted student puts on the needle, next to the teacher. Feature sizes
are compared at equal steps; the same window (64) and scale as the model.

    python experiments/needle_capacity.py --out docs/results/needle-capacity.json
    python experiments/needle_capacity.py --out OUT.json --student RUN/stage1-*/model   # no fitting:
        # the needle mass of a trained stage-1 checkpoint's maps and gates at that layer
"""

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lolcats_core.data import PasskeyGenerator
from lolcats_core.feature_maps import Hedgehog
from lolcats_core.presets import smollm2_dir
from lolcats_kernels.hybrid_attention.naive import hybrid_attention_weights_naive


def capture(model, layer: int, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (H, T, D), k and v (Hkv, T, D) of `layer` for one prompt (q, k after RoPE), fp32."""
    attn = model.model.layers[layer].self_attn
    got = {}

    def hook(module, args, kwargs):
        h = kwargs["hidden_states"]
        B, T, _ = h.shape
        q = module.q_proj(h).view(B, T, -1, module.head_dim).transpose(1, 2)
        k = module.k_proj(h).view(B, T, -1, module.head_dim).transpose(1, 2)
        got["q"], got["k"] = apply_rotary_pos_emb(q, k, *kwargs["position_embeddings"])
        got["v"] = module.v_proj(h).view(B, T, -1, module.head_dim).transpose(1, 2)

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
    finally:
        handle.remove()
    return got["q"][0].float(), got["k"][0].float(), got["v"][0].float()


def teacher_weights(q, k, rows, scale):
    """Causal softmax attention of the query rows: (H, R, T)."""
    H, T, _ = q.shape
    kk = k.repeat_interleave(H // k.shape[0], 0)
    s = scale * q[:, rows] @ kk.transpose(1, 2)
    s = s.masked_fill(torch.arange(T)[None, None, :] > rows[None, :, None], float("-inf"))
    return s.softmax(-1)


def student_weights(q, k, rows, scale, fq, fk, gamma_logit, window):
    """Hybrid attention weights of the query rows (the library's reference formula): (H, R, T)."""
    qr = q[None, :, rows]
    return hybrid_attention_weights_naive(qr, k[None], fq(qr), fk(k[None]), torch.sigmoid(gamma_logit), window,
                                          True, scale, rows=rows)[0]


def load_student(path: str, layer: int, H: int, D: int) -> tuple[Hedgehog, Hedgehog, torch.Tensor]:
    """Layer `layer`'s Hedgehog maps and gate logits from a lolcats checkpoint's weight file."""
    weights = load_file(str(Path(path) / "model.safetensors"))
    prefix = f"model.layers.{layer}.self_attn."
    if prefix + "feature_map_q.weight" not in weights:
        raise SystemExit(f"{path}: layer {layer} has no Hedgehog feature maps (kept as softmax?)")
    maps = []
    for name in ("feature_map_q", "feature_map_k"):
        w = weights[prefix + name + ".weight"].float()
        fm = Hedgehog(w.shape[0], D, w.shape[-1])
        fm.weight.data.copy_(w)
        maps.append(fm)
    return maps[0], maps[1], weights[prefix + "window_gate"].float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layer", type=int, default=21)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--train", type=int, default=24, help="training prompts")
    ap.add_argument("--test", type=int, default=12, help="held-out prompts")
    ap.add_argument("--dims", default="16,64,256", help="Hedgehog feature sizes f (2f features)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--queries", type=int, default=64,
                    help="query rows sampled per prompt and step, plus the last one; 0: every row past "
                         "the window with equal weight, as the stage-1 loss weighs them")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--text-share", type=float, default=0.0,
                    help="share of training prompts that are plain essay text (no needle), as the "
                         "recipe mixes passkey samples into chat data (0.8: one passkey prompt in five)")
    ap.add_argument("--student", help="a stage-1 checkpoint directory: measure its maps instead of fitting")
    ap.add_argument("--own-states", action="store_true",
                    help="with --student: queries and keys from the linearized model's own forward (its "
                         "earlier layers linearized too) instead of the teacher's")
    ap.add_argument("--objective", choices=["kl", "mse"], default="kl",
                    help="fit attention weights (KL) or attention outputs (MSE, the stage-1 loss)")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = smollm2_dir()
    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
    gen, rng = PasskeyGenerator(tok), random.Random(0)
    prompts, samples = [], []
    for _ in range(args.train + args.test):
        sample = gen.sample(args.length, rng.uniform(0.1, 0.9), rng)
        q, k, v = capture(model, args.layer, sample.input_ids)
        prompts.append((q, k, v, sample.needle_start, sample.needle_end))
        samples.append(sample)
    train, test = prompts[: args.train], prompts[args.train:]
    n_text = round(args.train * args.text_share / (1 - args.text_share))
    for _ in range(n_text):  # needle-free rows: their last position has no needle to find
        start = rng.randrange(len(gen.haystack) - args.length)
        q, k, v = capture(model, args.layer, gen.haystack[start: start + args.length].tolist())
        train.append((q, k, v, 0, 0))
    random.Random(1).shuffle(train)
    H, T, D = prompts[0][0].shape
    scale = D**-0.5
    last = torch.tensor([T - 1])

    def needle_mass(weights_fn):
        """Mean over held-out prompts of each head's last-position mass on the needle: (H,)."""
        return torch.stack([weights_fn(q, k, last)[:, 0, s:e].sum(-1) for q, k, _, s, e in test]).mean(0)

    teacher = needle_mass(lambda q, k, rows: teacher_weights(q, k, rows, scale))
    best = int(teacher.argmax())
    result = {"layer": args.layer, "length": T, "window": args.window, "steps": args.steps,
              "objective": args.objective, "queries": args.queries, "text_share": args.text_share,
              "teacher_needle_mass": teacher.tolist(), "retrieval_head": best, "students": {}}
    print(f"layer {args.layer}, {T} tokens: teacher needle mass, head {best}: {teacher[best]:.3f} "
          f"(uniform: {(test[0][4] - test[0][3]) / T:.3f})")
    if args.student:
        fq, fk, gamma_logit = load_student(args.student, args.layer, H, D)
        if args.own_states:  # the held-out prompts through the linearized model itself
            from lolcats_core.checkpoint import load_linearized

            linearized = load_linearized(args.student).eval()
            test = [(*capture(linearized, args.layer, x.input_ids), x.needle_start, x.needle_end)
                    for x in samples[args.train:]]
        with torch.no_grad():
            student = needle_mass(lambda q, k, rows: student_weights(q, k, rows, scale, fq, fk, gamma_logit,
                                                                     args.window))
        result["students"]["checkpoint"] = {"path": args.student, "own_states": args.own_states,
                                            "needle_mass": student.tolist()}
        print(f"{args.student}: needle mass head {best} {student[best]:.3f} (best head {student.max():.3f})")
    for f in map(int, args.dims.split(",")) if not args.student else []:
        fq, fk = Hedgehog(H, D, f), Hedgehog(H, D, f)
        gamma_logit = torch.nn.Parameter(torch.full((H,), math.log(0.1 / 0.9)))
        opt = torch.optim.Adam([*fq.parameters(), *fk.parameters(), gamma_logit], lr=1e-2)
        start = time.perf_counter()
        for step in range(args.steps):
            q, k, v, _, _ = train[step % len(train)]
            rows = (torch.arange(args.window, T) if args.queries == 0 else
                    torch.cat([torch.randint(args.window, T - 1, (args.queries,)), last]))
            t = teacher_weights(q, k, rows, scale)
            s = student_weights(q, k, rows, scale, fq, fk, gamma_logit, args.window)
            if args.objective == "kl":
                loss = (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1).mean()
            else:
                vv = v.repeat_interleave(H // v.shape[0], 0)
                loss = ((s - t) @ vv).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            student = needle_mass(lambda q, k, rows: student_weights(q, k, rows, scale, fq, fk, gamma_logit,
                                                                     args.window))
        result["students"][f] = {"needle_mass": student.tolist(), "final_loss": loss.item(),
                                 "seconds": round(time.perf_counter() - start, 1)}
        print(f"f={f:4d}: needle mass head {best} {student[best]:.3f} (best head {student.max():.3f}), "
              f"train {args.objective} {loss.item():.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
