"""Loading linearized checkpoints (config.json + safetensors; written by `checkpoint_save`),
also through `AutoModelForCausalLM` once `register_auto_classes` ran.

Layout of a checkpoint directory:

    config.json         model_type "lolcats": base model (id, revision, fingerprint, config),
                        linearization settings, LoRA settings, weight file name and sha256
    model.safetensors   "adapter": feature maps, gates and LoRA weights only (the base model
                        is loaded from its id); "full": every weight, LoRA merged
    tokenizer files     when a tokenizer was given

Loading refuses pickle files, a weight file whose sha256 differs from the recorded one, and a
base model whose config or weight fingerprint differs from the recorded one.
"""

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

from .checkpoint_save import WEIGHTS_NAME, LolcatsConfig, attention_state
from .config import LinearizeConfig
from .convert import linearize
from .errors import CheckpointError
from .hashing import sha256_file
from .lora import LoraSettings, add_lora
from .presets import TOKENIZER_FILES, load_base_model, resolve

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Fields of the base config that must match for adapter weights to apply.
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size")


def _check_directory(path: Path) -> None:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path} contains pickle files {pickles}: lolcats loads safetensors only "
            "(pickle can execute code). Remove them or re-save the model with lolcats."
        )
    if not (path / WEIGHTS_NAME).exists():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}: not a lolcats checkpoint")


def _check_base(cfg: LolcatsConfig, base: nn.Module, got: str) -> None:
    """Raise unless the base model's config and weight fingerprint `got` are the checkpoint's."""
    have = base.config.to_dict()
    diffs = [f"{k}: checkpoint {cfg.base_config.get(k)!r} vs base {have.get(k)!r}"
             for k in SHAPE_FIELDS if cfg.base_config.get(k) != have.get(k)]
    if diffs:
        raise CheckpointError(
            f"base model {cfg.base_model.get('id')!r} does not match the checkpoint: " + "; ".join(diffs))
    want = cfg.base_model.get("fingerprint")
    if want and want != got:
        raise CheckpointError(
            f"base model weights differ from those the checkpoint was trained on "
            f"(fingerprint {got} != {want}, id {cfg.base_model.get('id')!r}, "
            f"revision {cfg.base_model.get('revision')!r}); load the matching base model")


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], allow_missing: set[str]) -> None:
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - allow_missing)
    if unexpected or shapes or missing:
        raise CheckpointError(
            "checkpoint weights do not fit the model: "
            + "; ".join(filter(None, [
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"shape mismatch {shapes[:5]}" if shapes else "",
                f"missing {missing[:5]}" if missing else ""])))
    model.load_state_dict(state, strict=False)


def load_linearized(path, base_model: str | None = None, dtype: torch.dtype = torch.float32,
                    device="cpu", merge_lora: bool = True) -> nn.Module:
    """Load a lolcats checkpoint directory.

    Args:
        base_model: where to load the base model of an "adapter" checkpoint from (preset,
            directory or hub id); default: the id recorded in the checkpoint.
        device: "meta": the model's structure only, checked against the checkpoint (an
            "adapter" checkpoint's base model by the fingerprint in its files): what sharded
            stage 2 builds on the ranks that rank 0 fills (`lolcats_core.training.sharded`).
        merge_lora: merge LoRA into the projections (inference); else return the PeftModel.
    """
    path = Path(path)
    _check_directory(path)
    cfg = LolcatsConfig.from_pretrained(path)
    if sha256_file(path / WEIGHTS_NAME) != cfg.weights.get("sha256"):
        raise CheckpointError(
            f"{path / WEIGHTS_NAME} was modified after saving (sha256 differs from config.json); "
            "refusing to load a tampered checkpoint")
    state = load_file(path / WEIGHTS_NAME)
    if str(device) == "meta":  # shapes only: loading them checks that they fit, copies nothing
        state = {k: v.to("meta") for k, v in state.items()}
    lin = LinearizeConfig.from_dict(cfg.linearization)
    if cfg.weights.get("contents") == "full":
        base_cfg = AutoConfig.for_model(**copy.deepcopy(cfg.base_config))
        with no_init_weights():  # every weight comes from the file: skip the random init
            model = AutoModelForCausalLM.from_config(base_cfg, dtype=dtype)
        model.config.lolcats_base = dict(cfg.base_model)
        linearize(model, lin)
        tied = {k for k in model.state_dict() if k not in state} if base_cfg.tie_word_embeddings else set()
        _load_into(model, state, allow_missing=tied)
        model.tie_weights()
        return model.to(device).eval()
    base_device = "meta" if str(device) == "meta" else "cpu"
    model, _, ref = load_base_model(base_model or cfg.base_model["id"], dtype=dtype, device=base_device)
    _check_base(cfg, model, ref.fingerprint)
    model.config.lolcats_base = dict(cfg.base_model)
    linearize(model, lin)
    lora_state = {k.removeprefix("lora::"): v for k, v in state.items() if k.startswith("lora::")}
    attn_state = {k: v for k, v in state.items() if not k.startswith("lora::")}
    _load_into(model, attn_state, allow_missing=set(model.state_dict()) - set(attention_state(model)))
    if cfg.lora:
        model = add_lora(model, LoraSettings(**cfg.lora))
        result = set_peft_model_state_dict(model, lora_state)
        if result.unexpected_keys:
            raise CheckpointError(f"LoRA weights do not fit the model: unexpected {result.unexpected_keys[:5]}")
        if merge_lora:
            model = model.merge_and_unload()
    return model.to(device=device, dtype=dtype).eval()


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a lolcats checkpoint directory (its config.json has model_type lolcats)."""
    cfg = Path(path) / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("model_type") == "lolcats"


def load_for_inference(name: str, linearize_untrained: LinearizeConfig | None = None, device: str = "cpu",
                       dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a lolcats checkpoint, a preset or a base-model path, on `device` in
    `dtype`; a base model is linearized with untrained feature maps when `linearize_untrained`
    is given."""
    if is_checkpoint(name):
        model = load_linearized(name, dtype=dtype, device=device)
        d = Path(name)
        base = json.loads((d / "config.json").read_text())["base_model"]["id"]
        has_tok = any((d / f).exists() for f in TOKENIZER_FILES)
        tokenizer = AutoTokenizer.from_pretrained(d if has_tok else resolve(base)[0])
        return model, tokenizer
    model, tokenizer, _ = load_base_model(name, dtype=dtype, device=device)
    if linearize_untrained is not None:
        linearize(model, linearize_untrained)
    return model.eval(), tokenizer


class LolcatsForCausalLM:
    """Entry point of `AutoModelForCausalLM.from_pretrained(dir)` for lolcats checkpoints.

    Returns the linearized model itself (a `Lolcats<Base>ForCausalLM`), not an instance of
    this class.
    """

    config_class = LolcatsConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, dtype=None,
                        device_map=None, base_model_path=None, **kwargs):
        """Load a lolcats checkpoint; `base_model_path` overrides where its base model comes from."""
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        device = device_map if isinstance(device_map, (str, torch.device)) and device_map != "auto" else "cpu"
        return load_linearized(pretrained_model_name_or_path, base_model=base_model_path,
                               dtype=dtype or torch.float32, device=device)


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` recognise lolcats checkpoints."""
    AutoConfig.register("lolcats", LolcatsConfig, exist_ok=True)
    AutoModelForCausalLM.register(LolcatsConfig, LolcatsForCausalLM, exist_ok=True)
