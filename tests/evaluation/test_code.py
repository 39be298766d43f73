"""HumanEval / MBPP: problem loading, the execution sandbox, code extraction, pass@1."""

import copy
import math
import time

import pytest
import torch

from lolcats_core.errors import ConfigError
from lolcats_core.evaluation import EvalConfig, code_pass_at_1, evaluate_model, summary_metrics
from lolcats_core.evaluation.code import answer_code, build_program, extract_code, load_problems
from lolcats_core.evaluation.sandbox import run_program, run_programs


@pytest.fixture(scope="module")
def humaneval():
    return load_problems("humaneval")


def test_both_sets_load_in_full(humaneval):
    assert len(humaneval) == 164 and humaneval[0].task_id == "HumanEval/0"
    assert len({p.task_id for p in humaneval}) == 164 and all(p.entry_point for p in humaneval)
    mbpp = load_problems("mbpp")
    assert len(mbpp) == 500 and (mbpp[0].task_id, mbpp[-1].task_id) == ("MBPP/11", "MBPP/510")
    assert all(p.tests.startswith("assert") for p in mbpp)
    assert [p.task_id for p in load_problems("mbpp", limit=2)] == ["MBPP/11", "MBPP/12"]
    with pytest.raises(ConfigError, match="unknown"):
        load_problems("apps")


def test_reference_passes_and_wrong_answer_fails(humaneval):
    problem = humaneval[0]
    right = build_program(problem, problem.solution)
    wrong = build_program(problem, "    return False\n")
    results = run_programs([right, wrong, "def f(:\n"], workers=2)
    assert [r.status for r in results] == ["passed", "failed", "failed"]
    assert results[1].message == "AssertionError" and results[2].message.startswith("SyntaxError")


def test_whole_function_answer_replaces_the_stub(humaneval):
    """A chat answer that redefines the entry point keeps the prompt's imports and helpers."""
    problem = humaneval[0]
    answer = f"def {problem.entry_point}(numbers, threshold):\n{problem.solution}"
    assert run_program(build_program(problem, answer)).passed
    mbpp = load_problems("mbpp", limit=1)[0]
    assert run_program(build_program(mbpp, mbpp.solution)).passed


def test_infinite_loop_times_out():
    start = time.perf_counter()
    result = run_program("while True:\n    pass\n", timeout=2)
    assert result.status == "timeout" and not result.passed
    assert time.perf_counter() - start < 5


def test_writes_outside_the_sandbox_are_refused(tmp_path):
    outside, keep = tmp_path / "x", tmp_path / "keep"
    keep.write_text("keep")
    for attempt in (f"open({str(outside)!r}, 'w').write('x')", f"import os; os.remove({str(keep)!r})",
                    f"import pathlib; pathlib.Path({str(outside)!r}).write_text('x')"):  # fmt: skip
        result = run_program(attempt)
        assert result.status == "failed" and "refused" in result.message, attempt
    assert not outside.exists() and keep.read_text() == "keep"
    # a relative escape is refused too, while writing inside the sandbox works
    program = (
        "import os\ntry:\n    open('../x', 'w')\nexcept PermissionError:\n    pass\n"
        "assert not os.path.exists('../x')\nopen('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())\n"
    )
    result = run_program(program)
    assert result.passed and result.message == "ok"


def test_network_and_processes_are_refused():
    for attempt in ("import socket; socket.create_connection(('127.0.0.1', 80))",
                    "import subprocess; subprocess.run(['true'])", "import os; os.fork()"):  # fmt: skip
        result = run_program(attempt)
        assert result.status == "failed" and "refused" in result.message, attempt


def test_code_extraction():
    chat = "Here it is:\n```\nnot this\n```\nand\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_code(chat) == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```py\nx = 1\n") == "x = 1\n"  # generation stopped inside the block
    assert extract_code("x = 1\n") == "x = 1\n"
    mbpp, humaneval = load_problems("mbpp", limit=1)[0], load_problems("humaneval", limit=1)[0]
    assert answer_code(mbpp, "def f():\n    pass\n```\nThis works.", chat=False) == "def f():\n    pass\n"
    body = "    return True\n"
    assert answer_code(humaneval, body + "\n\ndef main():\n    pass\n", chat=False) == body + "\n"


class Oracle(torch.nn.Module):
    """Answers from a fixed {text in the prompt: answer} table, as `generate` would."""

    def __init__(self, model, tokenizer, answers: dict[str, str]):
        super().__init__()
        self.inner, self.tokenizer, self.answers = model, tokenizer, answers
        self.config, self.generation_config = model.config, model.generation_config

    def generate(self, input_ids, attention_mask, generation_config):
        eos = self.tokenizer.eos_token_id
        tails = []
        for row, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(row[mask.bool()])
            answer = next(a for key, a in self.answers.items() if key in prompt)
            tails.append(self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos])
        width = max(map(len, tails))
        tail = torch.tensor([t + [eos] * (width - len(t)) for t in tails])
        return torch.cat([input_ids, tail], dim=1)


def test_pass_at_1_and_its_stderr(tiny_lm, tokenizer, humaneval):
    """Right on problems 0 and 2, wrong on 1 and 3: pass@1 = 0.5 +- sqrt(0.25 / 4)."""
    answers = {
        p.prompt: f"Sure:\n```python\n{p.prompt}{p.solution if i % 2 == 0 else '    return None'}\n```"
        for i, p in enumerate(humaneval[:4])
    }
    result = code_pass_at_1(Oracle(tiny_lm, tokenizer, answers), tokenizer, "humaneval", limit=4, batch_size=3,
                            progress=False)  # fmt: skip
    assert result["prompt_format"] == "chat" and result["n"] == 4 and result["passed"] == 2
    assert result["pass@1"] == 0.5 and result["stderr"] == pytest.approx(math.sqrt(0.25 / 4))
    assert [(p["task_id"], p["passed"]) for p in result["problems"]] == [
        (f"HumanEval/{i}", i % 2 == 0) for i in range(4)
    ]
    assert result["statuses"] == {"passed": 2, "failed": 2}
    # without a chat template the raw prompt is continued; the body is cut where the function ends
    raw = copy.deepcopy(tokenizer)
    raw.chat_template = None
    bodies = {p.prompt: p.solution + "\n\ndef unrelated(:\n" for p in humaneval[:2]}
    result = code_pass_at_1(Oracle(tiny_lm, raw, bodies), raw, "humaneval", limit=2, progress=False)
    assert result["prompt_format"] == "raw" and result["pass@1"] == 1.0 and result["stderr"] == 0.0


def test_config_validates_code_settings():
    assert EvalConfig(code_tasks=["humaneval", "mbpp"], code_limit=3).code_max_new_tokens == 512
    for bad in (dict(code_tasks=["apps"]), dict(code_tasks="humaneval"), dict(code_limit=0),
                dict(code_max_new_tokens=0)):  # fmt: skip
        with pytest.raises(ConfigError):
            EvalConfig(**bad)


@pytest.mark.slow
def test_end_to_end_on_a_tiny_random_llama(tiny_lm, tokenizer):
    config = EvalConfig(perplexity=False, passkey=False, tasks=[], code_tasks=["humaneval", "mbpp"], code_limit=2,
                        code_max_new_tokens=16, batch_size=2)  # fmt: skip
    report = evaluate_model(tiny_lm, tokenizer, config, progress=False)
    for task in ("humaneval", "mbpp"):
        entry = report["code"][task]
        assert entry["n"] == 2 and entry["pass@1"] == 0.0 and entry["stderr"] == 0.0
        assert len(entry["problems"]) == 2 and all(isinstance(p["answer"], str) for p in entry["problems"])
    assert summary_metrics(report) == {"humaneval (pass@1)": 0.0, "mbpp (pass@1)": 0.0}
