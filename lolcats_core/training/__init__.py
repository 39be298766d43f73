"""Training stages: attention transfer (stage 1) and LoRA adjustment (stage 2)."""

from .finetune import held_out_loss, lora_adjust
from .loop import NonFiniteLossError, TrainConfig, TrainResult
from .transfer import attention_transfer, layer_mse

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "attention_transfer", "held_out_loss",
           "layer_mse", "lora_adjust"]
