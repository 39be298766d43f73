"""MLflow pyfunc wrapper of a lolcats checkpoint ("models from code": MLflow copies this file
into the logged model and runs it at load time; `set_model` names the model object).

    model = mlflow.pyfunc.load_model("models:/lolcats-smollm2-135m@champion")
    model.predict(["Write one sentence about cats."], params={"max_new_tokens": 32})
    -> ["Cats are ..."]

The model's artifact `checkpoint` is the lolcats checkpoint directory (config.json,
model.safetensors, tokenizer). Loading needs the `lolcats` package (it registers the
checkpoint type) and, for adapter checkpoints, the base model it names.
"""

import mlflow
from mlflow.pyfunc import PythonModel

DEFAULTS = {"max_new_tokens": 32, "temperature": 0.0, "chat": False}


def _prompts(model_input) -> list[str]:
    """Prompts from a str, a list of str, a dict with `prompt`, or a DataFrame/array."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        value = model_input.get("prompt", next(iter(model_input.values())))
        return _prompts(value)
    if hasattr(model_input, "columns"):  # pandas DataFrame
        col = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[col].tolist()]
    if hasattr(model_input, "tolist"):  # numpy array / Series
        model_input = model_input.tolist()
    return [p if isinstance(p, str) else str(p[0] if isinstance(p, (list, tuple)) else p)
            for p in model_input]


class LolcatsTextModel(PythonModel):
    """Greedy (or sampled) text generation from a linearized checkpoint."""

    def load_context(self, context):
        import lolcats_core  # noqa: F401 - registers the `lolcats` model type
        from lolcats_core.checkpoint import load_for_inference

        self.model, self.tokenizer = load_for_inference(context.artifacts["checkpoint"])
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import torch

        p = {**DEFAULTS, **(params or {})}
        tok, outputs = self.tokenizer, []
        for prompt in _prompts(model_input):
            text = prompt
            if p["chat"] and tok.chat_template:
                text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                               tokenize=False, add_generation_prompt=True)
            inputs = tok(text, return_tensors="pt")
            sample = float(p["temperature"]) > 0
            with torch.no_grad():
                out = self.model.generate(
                    **inputs, max_new_tokens=int(p["max_new_tokens"]), do_sample=sample,
                    temperature=float(p["temperature"]) if sample else None, top_p=None,
                    top_k=None, pad_token_id=tok.pad_token_id or tok.eos_token_id)
            new = out[0, inputs["input_ids"].shape[1]:]
            outputs.append(tok.decode(new, skip_special_tokens=True))
        return outputs


mlflow.models.set_model(LolcatsTextModel())
