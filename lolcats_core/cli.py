"""The `lolcats` command line."""

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import is_checkpoint, load_for_inference
from .config import ATTENTION_KINDS, LinearizeConfig
from .errors import LolcatsError
from .feature_maps import FEATURE_MAPS
from .lora import LoraSettings
from .presets import PRESETS


def _softmax_layers(text: str) -> list[int] | float:
    """'0,1,5' -> [0, 1, 5]; '0.5' -> 0.5 (a fraction of the layers)."""
    if not text:
        return []
    if "," not in text and "." in text:
        return float(text)
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer indices like 0,1,5 or a fraction like 0.5, got {text!r}")


def _add_linearize_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("linearization")
    g.add_argument("--feature-map", default="hedgehog", choices=sorted(FEATURE_MAPS))
    g.add_argument("--feature-dim", type=int, default=64, help="feature map projection size f")
    g.add_argument("--attention", default="hybrid", choices=ATTENTION_KINDS)
    g.add_argument("--window", type=int, default=64, help="sliding-window size in tokens")
    g.add_argument("--softmax-layers", type=_softmax_layers, default=[],
                   help="layers kept as softmax: indices (0,1,5) or a fraction (0.5)")
    g.add_argument("--share-key-map", action="store_true", help="one key feature map per KV group")
    g.add_argument("--lora-r", type=int, default=8, help="LoRA rank of stage 2")


def _linearize_config(args) -> LinearizeConfig:
    return LinearizeConfig(feature_map=args.feature_map, feature_dim=args.feature_dim,
                           attention=args.attention, window=args.window,
                           softmax_layers=args.softmax_layers, share_key_map=args.share_key_map)


def cmd_plan(args) -> None:
    from .plan import format_plan, make_plan

    if args.config:
        import dataclasses

        import torch

        from .memory import device_memory, fit_run_config
        from .run_config import load_run_config

        cfg = load_run_config(args.config, args.profile, args.set)
        model, lin, lora = args.model or cfg.model, cfg.linearize, cfg.stage2.lora
        if args.gpu_memory is not None:
            memory = int(args.gpu_memory * 2**30)
        else:
            memory = device_memory("cuda") if torch.cuda.is_available() else 80 * 2**30
        fits = fit_run_config(dataclasses.replace(cfg, model=model), memory)[1]
    elif args.model:
        lin, lora, fits = _linearize_config(args), LoraSettings(r=args.lora_r, alpha=2 * args.lora_r), {}
        model = args.model
    else:
        raise LolcatsError("give --model PRESET or --config FILE")
    plan = make_plan(model, lin, lora, gpus=args.gpus)
    if args.json:
        print(json.dumps({**plan.__dict__, "training": {n: f.__dict__ for n, f in fits.items()}}, indent=1))
        return
    print(format_plan(plan, lin, lora))
    if fits:
        print("\ntraining on one GPU (estimated peaks, lolcats_core.memory; stageN.micro_batch: auto picks the "
              "largest micro-batch that fits)")
        for fit in fits.values():
            print(f"  {fit.describe()}")


def cmd_generate(args) -> None:
    import torch
    from transformers import TextStreamer

    lin = _linearize_config(args) if args.linearize else None
    model, tok = load_for_inference(args.model, lin)
    if tok is None:
        raise LolcatsError(f"{args.model} has no tokenizer files; save one beside the model")
    text = args.prompt
    if args.chat and tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                       temperature=args.temperature if args.temperature > 0 else None,
                       top_p=None, top_k=None, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                       streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True))


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cmd_linearize(args) -> None:
    from .pipeline import attention_transfer_step, evaluate_step, lora_step, prepare_data
    from .run_config import load_run_config
    from .summary import format_summary

    _setup_logging()
    cfg = load_run_config(args.config, args.profile, args.set)
    print(f"linearizing {cfg.model} ({cfg.name}) on {cfg.resolved_device()}, output in {cfg.output_dir}/{cfg.name}")
    data = prepare_data(cfg)
    stage1 = attention_transfer_step(cfg, data)
    stage2 = lora_step(cfg, data, stage1)
    teacher = evaluate_step(cfg, data, None, "teacher")
    student = evaluate_step(cfg, data, stage2["model"], "linearized")
    print(format_summary(cfg, data, stage1, stage2, teacher["report"], student["report"]))


def _print_eval(step: int, metrics: dict) -> None:
    from .launch import eval_line

    print(eval_line(step, metrics), flush=True)


def cmd_train(args) -> None:
    """One training stage; under torchrun, every rank runs it (block-wise or data parallel).
    Rank 0 prints a line per held-out evaluation (`lolcats_core.launch`) and the completion record."""
    import torch.distributed as dist

    from .distributed import join_process_group, torchrun_ranks
    from .pipeline import attention_transfer_step, lora_step, prepare_data, read_done, stage1_dir
    from .presets import base_model_ref
    from .run_config import load_run_config

    _setup_logging()
    cfg = load_run_config(args.config, args.profile, args.set)
    ranks = torchrun_ranks()
    if ranks is not None:
        join_process_group(ranks, cfg.resolved_device())
    try:
        if ranks is not None and not ranks.is_main:
            dist.barrier()  # rank 0 prepares and caches the data first
        data = prepare_data(cfg)
        if ranks is not None and ranks.is_main:
            dist.barrier()
        if args.stage == 1:
            record = attention_transfer_step(cfg, data, on_eval=_print_eval, ranks=ranks)
        else:
            done = stage1_dir(cfg, base_model_ref(cfg.model).fingerprint, data.fingerprint)
            stage1 = read_done(done)
            if stage1 is None:
                raise LolcatsError(f"stage 1 of {cfg.name} has not finished: run `lolcats train --stage 1` first")
            stage1 |= {"dir": str(done), "model": str(done / "model")}  # it may come from another machine (S3)
            record = lora_step(cfg, data, stage1, on_eval=_print_eval, ranks=ranks)
    finally:
        if ranks is not None:
            dist.destroy_process_group()
    if ranks is None or ranks.is_main:
        print(json.dumps({k: record[k] for k in ("step", "dir", "model", "steps", "tokens", "seconds")}))


def cmd_evaluate(args) -> None:
    import torch

    from .evaluation import EvalConfig, evaluate_model
    from .pipeline import prepare_data
    from .run_config import load_run_config

    _setup_logging()
    if args.config:
        cfg = load_run_config(args.config, args.profile, args.set)
    else:  # default evaluation; held-out text from ShareGPT as the base model's tokenizer renders it
        base = (json.loads((Path(args.model) / "config.json").read_text())["base_model"]["id"]
                if is_checkpoint(args.model) else args.model)
        tree = {"name": "evaluate", "model": base, "data": {"train_tokens": 1024, "seq_len": 1024}}
        cfg = load_run_config(tree=tree, overrides=args.set)
    model, tok = load_for_inference(args.model, device=cfg.resolved_device(), dtype=cfg.torch_dtype())
    data = prepare_data(cfg)
    eval_cfg = EvalConfig(**{**cfg.eval.__dict__, "output_dir": args.output_dir})
    with torch.no_grad():
        report = evaluate_model(model, tok, eval_cfg, heldout=data.validation, name=Path(args.model).name)
    print(json.dumps(report, indent=1, default=str))


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def cmd_retrieval_layers(args) -> None:
    import torch

    from .evaluation import retrieval_scores

    model, tok = load_for_inference(args.model, device=args.device)
    if tok is None:
        raise LolcatsError(f"{args.model} has no tokenizer files; save one beside the model")
    with torch.no_grad():
        result = retrieval_scores(model, tok, [int(n) for n in args.lengths], args.depths, trials=args.trials)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        layer_scores, best_heads = result.layer_scores(), result.scores.argmax(axis=1)
        print(f"attention mass on the needle from the last prompt position (uniform attention: "
              f"{result.baseline:.3f}); {len(result.lengths) * len(result.depths) * args.trials} prompts")
        print("| rank | layer | best head | mass | x uniform |\n|---|---|---|---|---|")
        for rank, i in enumerate(result.top_layers(len(layer_scores)), 1):
            print(f"| {rank} | {i} | {best_heads[i]} | {layer_scores[i]:.3f} | {layer_scores[i] / result.baseline:.1f} |")
        print(f"keep the top {args.top} as softmax: --set linearize.softmax_layers="
              f"[{','.join(map(str, sorted(result.top_layers(args.top))))}]")
    if args.plot:
        print(f"figure: {result.plot(args.plot)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lolcats",
        description="Linearize Transformer LLMs with LoLCATs (attention transfer + LoRA).",
        epilog=f"model presets: {', '.join(PRESETS)}; or a local model directory / hub id",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="show what linearizing a model involves (no weights loaded)",
                       description="Build the model on the meta device and report converted layers, "
                                   "trainable parameters and decode memory.")
    p.add_argument("--model", help="preset name, model directory or hub id (default: the config's)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--gpus", type=int, default=1, help="per-rank layer blocks and memory on this many GPUs")
    p.add_argument("--config", help="a run config: its linearization and LoRA, and each stage's micro-batch, "
                                    "grad_accum, checkpointing and estimated memory on one GPU")
    p.add_argument("--profile", help="profile of the config (gpu, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config setting")
    p.add_argument("--gpu-memory", type=float, metavar="GIB",
                   help="the GPU's memory for --config (default: the visible GPU's, else 80)")
    _add_linearize_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("generate", help="stream text from a linearized checkpoint or a base model",
                       description="Generate text. MODEL is a lolcats checkpoint directory, a preset or a "
                                   "base-model directory (add --linearize to swap in untrained attention).")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--linearize", action="store_true", help="linearize a base model before generating")
    _add_linearize_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("retrieval-layers", help="rank a softmax model's layers by attention on a passkey needle",
                       description="Measure, per layer and head, how much of the last prompt position's "
                                   "attention lands on the passkey needle (eager attention, one prompt at a "
                                   "time): the layers worth keeping as softmax for retrieval.")
    p.add_argument("--model", required=True, help="preset name or base-model directory")
    p.add_argument("--lengths", type=_floats, default=[1024, 2048], help="prompt lengths (default 1024,2048)")
    p.add_argument("--depths", type=_floats, default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="needle depths in [0, 1] (default 0.1,0.3,0.5,0.7,0.9: outside a short window)")
    p.add_argument("--trials", type=int, default=2, help="prompts per (length, depth)")
    p.add_argument("--top", type=int, default=4, help="how many layers the suggestion keeps")
    p.add_argument("--plot", help="write the layer x head heat map here (PNG)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_retrieval_layers)

    p = sub.add_parser("train", help="run one training stage; launch with torchrun for several processes",
                       description="Run stage 1 (attention transfer) or stage 2 (LoRA) of a config. Under "
                                   "`torchrun --nproc-per-node N -m lolcats_core.cli train ...` stage 1 trains "
                                   "one block of layers per rank and stage 2 is data parallel; prints the "
                                   "completion record.")
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--config", required=True, help="YAML run config, e.g. configs/smollm2-135m.yaml")
    p.add_argument("--profile", help="profile of the config to apply (cpu-smoke, gpu, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set stage1.lr=0.001 (repeatable)")
    p.set_defaults(func=cmd_train)

    for name, helptext in (("linearize", "run attention transfer, LoRA and evaluation from a config"),
                           ("evaluate", "evaluate a checkpoint with a config's evaluation settings")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--config", required=name == "linearize",
                       help="YAML run config, e.g. configs/smollm2-135m.yaml"
                            + ("" if name == "linearize" else " (default: every evaluation, default sizes)"))
        p.add_argument("--profile", help="profile of the config to apply (cpu-smoke, gpu, ...)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set stage1.lr=0.001 (repeatable)")
        if name == "evaluate":
            p.add_argument("--model", required=True, help="checkpoint directory or preset")
            p.add_argument("--output-dir", help="where figures are written")
        p.set_defaults(func=cmd_linearize if name == "linearize" else cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LolcatsError as e:
        print(f"lolcats {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
