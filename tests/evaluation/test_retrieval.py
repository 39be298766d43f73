"""Retrieval scores: attention mass on the passkey needle per layer and head."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lolcats_core import LinearizeConfig, linearize
from lolcats_core.cli import main
from lolcats_core.data import PasskeyGenerator
from lolcats_core.errors import ConfigError, LolcatsError
from lolcats_core.evaluation import resolve_softmax_layers, retrieval_scores


def test_scores_are_the_eager_attention_on_the_needle(tiny_lm, tokenizer, tmp_path):
    result = retrieval_scores(tiny_lm, tokenizer, lengths=[160], depths=[0.5], trials=1, progress=False)
    assert result.scores.shape == (2, tiny_lm.config.num_attention_heads)
    # the same prompt, attention weights taken from output_attentions
    sample = PasskeyGenerator(tokenizer).sample(160, 0.5, random.Random("passkey-0-160-0.5"))
    tiny_lm.config._attn_implementation = "eager"
    with torch.no_grad():
        out = tiny_lm(torch.tensor([sample.input_ids]), output_attentions=True)
    tiny_lm.config._attn_implementation = "sdpa"
    expected = np.stack([a[0, :, -1, sample.needle_start : sample.needle_end].sum(-1).numpy()
                         for a in out.attentions])
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)
    assert result.baseline == pytest.approx((sample.needle_end - sample.needle_start) / 160)
    assert result.top_layers(1)[0] == int(expected.max(axis=1).argmax())
    assert result.plot(tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_a_linearized_model_is_refused(tiny_lm, tokenizer):
    linearize(tiny_lm, LinearizeConfig(window=4))
    with pytest.raises(LolcatsError, match="linearized: retrieval scores are measured on the softmax teacher"):
        retrieval_scores(tiny_lm, tokenizer, lengths=[160], depths=[0.5], trials=1, progress=False)


@pytest.mark.slow
def test_smollm2_has_retrieval_layers(capsys, tmp_path):
    argv = ["retrieval-layers", "--model", "smollm2-135m", "--lengths", "512", "--depths", "0.25,0.75",
            "--trials", "1", "--plot", str(tmp_path / "r.png"), "--json"]
    assert main(argv) == 0
    import json

    report = json.loads(capsys.readouterr().out.split("figure:")[0])
    scores = np.array(report["layer_scores"])
    # a trained model has heads that put most of their mass on the needle; uniform attention
    # would put report["baseline"] (~5%) there
    assert scores.max() > 0.5 and scores.max() > 5 * report["baseline"]
    assert (tmp_path / "r.png").exists()


def test_retrieval_k_in_the_config_is_checked_and_must_be_resolved():
    assert LinearizeConfig(softmax_layers="retrieval:3").retrieval_layers() == 3
    assert LinearizeConfig(softmax_layers=[1]).retrieval_layers() is None
    for bad in ("retrieval:0", "retrieval", "top:3", "retrieval:2x"):
        with pytest.raises(ConfigError, match="must be 'retrieval:K'"):
            LinearizeConfig(softmax_layers=bad)
    with pytest.raises(ConfigError, match="resolve it with lolcats_core.evaluation.resolve_softmax_layers"):
        LinearizeConfig(softmax_layers="retrieval:1").softmax_layer_indices(4)


def test_resolve_keeps_the_best_retrieval_layers(tiny_lm, tokenizer):
    lin = LinearizeConfig(window=4, softmax_layers="retrieval:1")
    resolved, scores = resolve_softmax_layers(lin, tiny_lm, tokenizer, [160, 99999], progress=False)
    assert scores.lengths == [160]  # lengths beyond the model's positions are skipped
    assert resolved.softmax_layers == scores.top_layers(1) and resolved.window == 4
    assert resolve_softmax_layers(LinearizeConfig(softmax_layers=[0]), tiny_lm, tokenizer, [160]) == (
        LinearizeConfig(softmax_layers=[0]), None)
    with pytest.raises(LolcatsError, match="keeps every layer of a 2-layer model"):
        resolve_softmax_layers(LinearizeConfig(softmax_layers="retrieval:2"), tiny_lm, tokenizer, [160])


def test_stage1_resolves_and_records_retrieval_layers(tiny_base, tmp_path):
    from lolcats_core.checkpoint import load_linearized
    from lolcats_core.pipeline import attention_transfer_step, prepare_data
    from lolcats_core.run_config import load_run_config
    from service.tiny import tiny_tree

    base, data_dir = tiny_base
    tree = tiny_tree("retrieval", base, tmp_path, max_steps=1)
    tree["data"]["cache_dir"] = str(data_dir)
    tree["linearize"]["softmax_layers"] = "retrieval:1"
    cfg = load_run_config(tree=tree)
    record = attention_transfer_step(cfg, prepare_data(cfg))
    assert len(record["softmax_layers"]) == 1 and len(record["retrieval"]["layer_scores"]) == 2
    assert record["softmax_layers"][0] == int(np.argmax(record["retrieval"]["layer_scores"]))
    assert (Path(record["dir"]) / "retrieval_layers.png").exists()
    # the checkpoint stores the resolved layers, so loading it needs no teacher
    model = load_linearized(record["model"])
    assert model.config.lolcats["softmax_layers"] == record["softmax_layers"]
