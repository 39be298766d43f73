"""The lm-eval bridge: exact log-likelihoods and real harness runs on local task data."""

import pytest
import torch
from lm_eval.api.instance import Instance

from lolcats_core.evaluation.harness import HFCausalLM, run_lm_eval
from lolcats_core.evaluation.tasks import build_tasks


def _logprob(model, context_ids, continuation_ids):
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    start = len(context_ids) - 1
    return sum(logprobs[start + i, t].item() for i, t in enumerate(continuation_ids))


def test_loglikelihood_equals_a_direct_forward(tiny_lm, tokenizer):
    lm = HFCausalLM(tiny_lm, tokenizer, batch_size=2, progress=False)
    requests = [("Question: what is up?\nAnswer:", " the sky"), ("Question: what is up?\nAnswer:", " down"),
                ("A B C", " D"), ("The capital of France is ", "Paris"), ("", "hello world")]  # fmt: skip
    results = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)])
    for (context, continuation), (logprob, greedy) in zip(requests, results):
        if context:
            context_ids, continuation_ids = lm._encode_pair(context, continuation)
            assert context_ids + continuation_ids == tokenizer(context + continuation)["input_ids"]
        else:
            context_ids, continuation_ids = [tokenizer.bos_token_id], tokenizer(continuation)["input_ids"]
        assert logprob == pytest.approx(_logprob(tiny_lm, context_ids, continuation_ids), abs=1e-4)
        assert isinstance(greedy, bool)


def test_rolling_loglikelihood_covers_every_token_once(tiny_lm, tokenizer):
    lm = HFCausalLM(tiny_lm, tokenizer, max_length=16, progress=False)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    ids = tokenizer(text)["input_ids"]
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    short = HFCausalLM(tiny_lm, tokenizer, max_length=1024, progress=False)
    (whole,) = short.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert whole == pytest.approx(_logprob(tiny_lm, [tokenizer.bos_token_id], ids), abs=1e-3)
    assert len(ids) > 16 and total != pytest.approx(whole)  # windows of 16 see less context


def test_generate_until_stops_at_the_stop_string(tiny_lm, tokenizer):
    lm = HFCausalLM(tiny_lm, tokenizer, progress=False)
    (free,) = lm.generate_until([Instance("generate_until", {}, ("Once upon a time", {"max_gen_toks": 6}), 0)])
    assert free
    stop = free.strip().split()[0]
    (cut,) = lm.generate_until(
        [Instance("generate_until", {}, ("Once upon a time", {"until": [stop], "max_gen_toks": 6}), 0)]
    )
    assert stop not in cut and free.startswith(cut)


@pytest.mark.parametrize(("task", "metric"), [("piqa", "acc"), ("arc_challenge", "acc_norm"), ("lambada", "acc")])
def test_five_item_task_runs_through_lm_eval(tiny_lm, tokenizer, task, metric):
    report = run_lm_eval(tiny_lm, tokenizer, [task], limit=5, batch_size=4, progress=False)[task]
    assert report["samples"] == 5 and report["num_fewshot"] == 0
    assert report["primary_metric"] == metric and 0.0 <= report["primary"] <= 1.0
    if task == "lambada":
        assert report["metrics"]["perplexity"] > 1.0


def test_task_definitions_read_local_data():
    names = ("piqa", "arc_easy", "hellaswag", "winogrande")
    docs = {name: next(iter(build_tasks(name).values())) for name in names}
    assert len(docs["piqa"].eval_docs) == 1838
    assert len(docs["arc_easy"].eval_docs) == 570
    doc = docs["hellaswag"].eval_docs[0]
    assert doc["query"].startswith("Roof shingle removal: A man is sitting on a roof.")
    assert len(docs["hellaswag"].doc_to_choice(doc)) == 4
    mmlu = build_tasks("mmlu")
    assert len(mmlu) == 57
    anatomy = mmlu["mmlu_anatomy"]
    assert anatomy.get_config("num_fewshot") == 5 and len(anatomy.fewshot_docs()) == 5
