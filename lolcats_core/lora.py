"""Stage-2 low-rank adjustment: LoRA (peft) on the attention projections."""

from dataclasses import asdict, dataclass, field

import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model

from .errors import ConfigError


@dataclass
class LoraSettings:
    """LoRA hyperparameters (DESIGN.md: r=8, alpha=16, dropout 0 on q, k, v, o)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError(f"LoRA r and alpha must be positive, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    def peft_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM")


def add_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """Freeze everything (feature maps and gates included) and add trainable LoRA adapters."""
    model.requires_grad_(False)
    peft_model = get_peft_model(model, settings.peft_config())
    peft_model.config.lolcats_lora = settings.to_dict()
    return peft_model


def lora_parameter_count(model: nn.Module, settings: LoraSettings) -> int:
    """Parameters LoRA would add to `model` (works on the meta device)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in settings.target_modules:
            total += settings.r * (module.in_features + module.out_features)
    return total
