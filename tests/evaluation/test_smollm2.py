"""The evaluators on the real SmolLM2-135M (slow: loads the model)."""

import pytest

from lolcats_core.data import DataConfig, prepare_dataset
from lolcats_core.evaluation import EvalConfig, evaluate_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smollm2_dir).eval(), AutoTokenizer.from_pretrained(smollm2_dir)


def test_smollm2_scores_like_a_trained_model(smollm2, tmp_path):
    model, tokenizer = smollm2
    data = prepare_dataset(
        DataConfig(seq_len=256, train_tokens=256, val_tokens=256 * 4, cache_dir=str(tmp_path)),
        tokenizer, max_positions=model.config.max_position_embeddings, progress=False,
    )  # fmt: skip
    config = EvalConfig(passkey_lengths=[512], passkey_depths=[0.25, 0.75], passkey_trials=2, ppl_max_rows=4,
                        tasks=["piqa", "lambada"], limit=20, batch_size=4)  # fmt: skip
    report = evaluate_model(model, tokenizer, config, heldout=data.validation, name="smollm2", progress=False)
    assert report["perplexity"]["perplexity"] < 20  # a random model is in the tens of thousands
    assert report["ood_perplexity"]["rows"] == 4 and report["ood_perplexity"]["perplexity"] < 100
    assert report["passkey"]["by_length"]["512"] >= 0.5
    assert report["lm_eval"]["piqa"]["primary"] > 0.5  # chance is 0.5
    assert report["lm_eval"]["lambada"]["metrics"]["perplexity"] < 1000
