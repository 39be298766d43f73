"""Evaluation: held-out perplexity, passkey retrieval, lm-eval tasks on local data, code
generation checked by execution (HumanEval, MBPP), figures.

`run_lm_eval` and `HFCausalLM` live in `lolcats_core.evaluation.harness` (needs the `eval`
extra); everything here imports without lm-eval.
"""

from .code import code_pass_at_1
from .config import CODE_TASKS, TASK_NAMES, ZERO_SHOT_TASKS, EvalConfig
from .passkey import PasskeyResult, passkey_retrieval
from .perplexity import perplexity
from .plots import plot_attention_mse, plot_passkey_heatmap, plot_retrieval_scores
from .report import compare_reports, comparison_table, evaluate_model, summary_metrics
from .retrieval import RetrievalScores, resolve_softmax_layers, retrieval_scores

__all__ = [
    "CODE_TASKS",
    "TASK_NAMES",
    "ZERO_SHOT_TASKS",
    "EvalConfig",
    "PasskeyResult",
    "RetrievalScores",
    "code_pass_at_1",
    "compare_reports",
    "comparison_table",
    "evaluate_model",
    "passkey_retrieval",
    "perplexity",
    "plot_attention_mse",
    "plot_passkey_heatmap",
    "plot_retrieval_scores",
    "resolve_softmax_layers",
    "retrieval_scores",
    "summary_metrics",
]
