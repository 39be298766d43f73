"""lolcats_core: LoLCATs linearization of Hugging Face causal LMs (no orchestration imports).

Importing the package registers the `lolcats` checkpoint type with transformers' auto
classes, so `AutoModelForCausalLM.from_pretrained(dir)` loads linearized checkpoints.
"""

from .checkpoint import load_linearized, register_auto_classes
from .checkpoint_save import save_linearized
from .config import LinearizeConfig
from .convert import SUPPORTED_ARCHITECTURES, freeze_for_attention_transfer, linearize
from .errors import CheckpointError, ConfigError, LolcatsError, UnsupportedModelError
from .lora import LoraSettings, add_lora
from .presets import PRESETS, load_base_model

register_auto_classes()

__all__ = [
    "PRESETS", "SUPPORTED_ARCHITECTURES", "CheckpointError", "ConfigError", "LinearizeConfig",
    "LolcatsError", "LoraSettings", "UnsupportedModelError", "add_lora",
    "freeze_for_attention_transfer", "linearize", "load_base_model", "load_linearized",
    "save_linearized",
]
