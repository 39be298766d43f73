"""MLflow pyfunc wrapper of a lolcats checkpoint ("models from code": MLflow copies this file
into the logged model and runs it at load time; `set_model` names the model object).

    model = mlflow.pyfunc.load_model("models:/lolcats-smollm2-135m@champion")
    model.predict(["Write one sentence about cats."], params={"max_new_tokens": 32})
    -> ["Cats are ..."]

    mlflow models serve -m models:/lolcats-smollm2-135m@champion   # a fresh environment
    curl -d '{"inputs": ["Hello"], "params": {"max_new_tokens": 16}}' \
         -H 'Content-Type: application/json' localhost:5000/invocations

The model is self-contained (tasks/pyfunc_logging.py): its code folder holds `lolcats_core`,
`lolcats_kernels` and, for a GGUF preset, the package with the base model's GGUF; a base model
from a local directory is its artifact `base_model`; its requirements pin what this loader
imports. Its artifact `checkpoint` is the lolcats checkpoint directory.

Serving limits: `max_new_tokens` is capped (env `LOLCATS_MAX_NEW_TOKENS` read at load, else
the model config's `max_new_tokens_limit`, else 1024) and so is a prompt's length in tokens
(`LOLCATS_MAX_PROMPT_TOKENS` / `max_prompt_tokens`, default 8192); a request over a limit, an
empty or malformed prompt or a bad parameter is refused with MLflow's INVALID_PARAMETER_VALUE,
which the scoring server answers with HTTP 400 and the one-line message (no stack trace).
Device: CUDA in bf16 where a GPU is present, else CPU in fp32 (env `LOLCATS_SERVE_DEVICE` or
the model config's `device` overrides `auto`).
"""

import logging
import math
import os
import threading

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

DEFAULTS = {"max_new_tokens": 32, "temperature": 0.0, "chat": False}
MAX_NEW_TOKENS_LIMIT = 1024  # default cap of `max_new_tokens`
MAX_PROMPT_TOKENS = 8192  # default cap of a prompt's length in tokens
MAX_PROMPTS = 64  # prompts in one request
_log = logging.getLogger(__name__)
LIMIT_ENV, PROMPT_LIMIT_ENV, DEVICE_ENV = "LOLCATS_MAX_NEW_TOKENS", "LOLCATS_MAX_PROMPT_TOKENS", "LOLCATS_SERVE_DEVICE"


class OneLineError(MlflowException):
    """An error the scoring server answers with its HTTP status (400 for
    INVALID_PARAMETER_VALUE, 500 for INTERNAL_ERROR) and this one-line message.

    Its message is fixed when raised: the scoring server rewrites an error's message to
    "Failed to predict data '<the whole request>'. \nError: <message>" (two lines, echoing
    the input back), which would make a refusal neither one line nor short."""

    @property
    def message(self) -> str:
        return self._one_line

    @message.setter
    def message(self, value) -> None:
        if not hasattr(self, "_one_line"):
            self._one_line = " ".join(str(value).split())


def bad_request(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and `message` (one line)."""
    return OneLineError(" ".join(str(message).split()), error_code=INVALID_PARAMETER_VALUE)


def _one_prompt(value, i: int) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 1:  # a row of one column
        value = value[0]
    if not isinstance(value, str):
        raise bad_request(f"prompt {i} is of type {type(value).__name__}, not a string; send "
                          '{"inputs": ["a prompt", ...]}')
    if not value.strip():
        raise bad_request(f"prompt {i} is empty")
    return value


def _prompts(model_input) -> list[str]:
    """Prompts from a str, a list of str, a dict with `prompt`, or a DataFrame/array of str;
    anything else, an empty prompt or no prompt at all is a `bad_request`."""
    if isinstance(model_input, str):
        model_input = [model_input]
    elif isinstance(model_input, dict):
        if "prompt" not in model_input:
            raise bad_request(f"expected a 'prompt' field, got {sorted(map(str, model_input))[:5]}")
        value = model_input["prompt"]
        model_input = [value] if isinstance(value, str) else value
    elif hasattr(model_input, "columns"):  # pandas DataFrame
        cols = list(model_input.columns)
        if "prompt" not in cols and len(cols) != 1:
            raise bad_request(f"expected one column of prompts (or a 'prompt' column), got {cols[:5]}")
        model_input = model_input["prompt" if "prompt" in cols else cols[0]].tolist()
    if hasattr(model_input, "tolist"):  # numpy array / Series
        model_input = model_input.tolist()
    if not isinstance(model_input, (list, tuple)):
        raise bad_request(f"expected a list of prompts, got type {type(model_input).__name__}")
    if not model_input:
        raise bad_request("no prompt given")
    if len(model_input) > MAX_PROMPTS:
        raise bad_request(f"{len(model_input)} prompts in one request; at most {MAX_PROMPTS}")
    return [_one_prompt(v, i) for i, v in enumerate(model_input)]


def _int_setting(name: str, env: str, config: dict, default: int) -> int:
    raw = os.environ.get(env) or config.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{env} / model config {name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{env} / model config {name} must be a positive integer, got {raw!r}")
    return value


def generation_params(params: dict | None, limit: int) -> dict:
    """The request's parameters over the defaults, checked: `max_new_tokens` an integer in
    1..limit, `temperature` a finite number >= 0, `chat` a boolean."""
    p = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if v is not None}}
    n = p["max_new_tokens"]
    if isinstance(n, bool) or not isinstance(n, int) and not (isinstance(n, float) and n.is_integer()):
        raise bad_request(f"max_new_tokens must be an integer, got {n!r}")
    n = int(n)
    if not 1 <= n <= limit:
        raise bad_request(f"max_new_tokens must be between 1 and {limit} (this server's limit, "
                          f"{LIMIT_ENV}), got {n}")
    t = p["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise bad_request(f"temperature must be a finite number >= 0, got {t!r}")
    if not isinstance(p["chat"], bool):
        raise bad_request(f"chat must be true or false, got {p['chat']!r}")
    return {"max_new_tokens": n, "temperature": float(t), "chat": p["chat"]}


def serving_device(config: dict) -> tuple:
    """(device, dtype): `auto` is CUDA in bf16 where a GPU is present, else CPU in fp32."""
    import torch

    want = os.environ.get(DEVICE_ENV) or config.get("device") or "auto"
    device = ("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want
    return device, (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)


class LolcatsTextModel(PythonModel):
    """Greedy (or sampled) text generation from a linearized checkpoint."""

    def load_context(self, context):
        import json
        from pathlib import Path

        from transformers import AutoTokenizer

        import lolcats_core  # noqa: F401 - registers the `lolcats` model type
        from lolcats_core.checkpoint import load_linearized
        from lolcats_core.presets import TOKENIZER_FILES, resolve

        config = dict(getattr(context, "model_config", None) or {})
        self.max_new_tokens = _int_setting("max_new_tokens_limit", LIMIT_ENV, config, MAX_NEW_TOKENS_LIMIT)
        self.max_prompt_tokens = _int_setting("max_prompt_tokens", PROMPT_LIMIT_ENV, config, MAX_PROMPT_TOKENS)
        self.device, self.dtype = serving_device(config)
        ckpt = Path(context.artifacts["checkpoint"])
        base = context.artifacts.get("base_model")  # bundled base (local directory or GGUF file)
        self.model = load_linearized(ckpt, base_model=base, dtype=self.dtype, device=self.device).eval()
        base_id = json.loads((ckpt / "config.json").read_text())["base_model"]["id"]
        tok_dir = next((d for d in (ckpt, base) if d and any((Path(d) / f).exists() for f in TOKENIZER_FILES)),
                       None)
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir or resolve(base_id)[0])
        self._lock = threading.Lock()  # one generation at a time on the one model

    def predict(self, context, model_input, params=None):
        import torch

        p = generation_params(params, self.max_new_tokens)
        prompts = _prompts(model_input)
        tok, encoded = self.tokenizer, []
        for i, prompt in enumerate(prompts):
            text = prompt
            if p["chat"] and tok.chat_template:
                text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                               tokenize=False, add_generation_prompt=True)
            inputs = tok(text, return_tensors="pt")
            n = inputs["input_ids"].shape[1]
            if n > self.max_prompt_tokens:
                raise bad_request(f"prompt {i} has {n} tokens; at most {self.max_prompt_tokens} "
                                  f"({PROMPT_LIMIT_ENV})")
            encoded.append(inputs)
        sample, outputs = p["temperature"] > 0, []
        with self._lock, torch.no_grad():
            for i, inputs in enumerate(encoded):
                inputs = inputs.to(self.device)
                try:
                    out = self.model.generate(
                        **inputs, max_new_tokens=p["max_new_tokens"], do_sample=sample,
                        temperature=p["temperature"] if sample else None, top_p=None, top_k=None,
                        pad_token_id=tok.pad_token_id or tok.eos_token_id)
                except Exception as e:  # the traceback goes to the server's log, not the client
                    _log.exception("generation failed on prompt %d", i)
                    raise OneLineError(f"generation failed on prompt {i}: {type(e).__name__} "
                                          "(details in the server log)", error_code=INTERNAL_ERROR) from None
                new = out[0, inputs["input_ids"].shape[1]:]
                outputs.append(tok.decode(new, skip_special_tokens=True))
        return outputs


mlflow.models.set_model(LolcatsTextModel())
