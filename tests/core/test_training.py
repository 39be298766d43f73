"""Stage 1 and stage 2 training: progress, exact resume, NaN handling."""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import make_tiny_config
from lolcats_core import LinearizeConfig, LoraSettings, add_lora, linearize
from lolcats_core.training import NonFiniteLossError, TrainConfig, attention_transfer, layer_mse, lora_adjust
from lolcats_core.training.state import save_train_state, saved_states
from lolcats_core.training.transfer import attention_state_names


def _model():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_tiny_config())
    return linearize(model, LinearizeConfig(window=4, feature_dim=16))


def batches(epoch: int, n: int = 4, T: int = 24):
    g = torch.Generator().manual_seed(1000 + epoch)
    ids = torch.randint(1, 127, (n, 2, T), generator=g)
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


EVAL = batches(-1, n=2)


def test_one_stage1_step_lowers_the_held_out_mse(tmp_path):
    model = _model()
    before = layer_mse(model, EVAL, "cpu")
    cfg = TrainConfig(lr=1e-2, max_steps=1, eval_every=1)
    _, after = attention_transfer(model, batches, EVAL, cfg, tmp_path)
    assert set(after) == {0, 1}
    assert all(after[k] < before[k] for k in before), (before, after)


def test_stage1_trains_every_transfer_parameter_sinks_and_scalar_gate_included(tmp_path):
    """The model runs without grad in stage 1 (teacher-forced): each transfer parameter, the
    scalar gate's projection too, must still receive a gradient and move."""
    torch.manual_seed(0)
    model = linearize(AutoModelForCausalLM.from_config(make_tiny_config()),
                      LinearizeConfig(window=4, feature_dim=16, sinks=2, sink_logits=True, gate="scalar"))
    before = {n: p.detach().clone() for n, p in attention_state_names(model).items()}
    assert any("state_gate" in n for n in before) and any("sink_logit" in n for n in before)
    attention_transfer(model, batches, EVAL, TrainConfig(lr=1e-2, max_steps=2, eval_every=2), tmp_path)
    after = attention_state_names(model)
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
    assert not unchanged, unchanged


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if "feature_map" in k or "window_gate" in k or "lora_" in k}


@pytest.mark.parametrize("stage", ["transfer", "lora"])
def test_resume_is_bit_identical(stage, tmp_path):
    def run(out, steps):
        model = _model()
        if stage == "lora":
            model = add_lora(model, LoraSettings(r=4, alpha=8))
        cfg = TrainConfig(lr=1e-2 if stage == "transfer" else 1e-3, max_steps=steps, eval_every=2,
                          grad_accum=2, plateau_patience=0)
        if stage == "transfer":
            attention_transfer(model, batches, EVAL, cfg, out)
        else:
            lora_adjust(model, batches, EVAL, cfg, out)
        return model

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 2)  # stop after 2 steps (a checkpoint exists) ...
    resumed = run(tmp_path / "b", 6)  # ... and a fresh process resumes to 6
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    state_a = load_file(tmp_path / "a" / "last" / "tensors.safetensors")
    state_b = load_file(tmp_path / "b" / "last" / "tensors.safetensors")
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a if not k.startswith("rng"))


def test_resume_takes_a_checkpoint_left_complete_at_last_tmp(tmp_path, caplog):
    """Killed after writing a checkpoint to last.tmp but before it replaced last: the run
    resumes from the newer one and leaves a single `last`."""
    def run(steps):
        cfg = TrainConfig(lr=1e-2, max_steps=steps, eval_every=2, plateau_patience=0)
        attention_transfer(_model(), batches, EVAL, cfg, tmp_path)

    run(2)
    shutil.copytree(tmp_path / "last", tmp_path / "step2")
    run(4)
    (tmp_path / "last").rename(tmp_path / "last.tmp")
    (tmp_path / "step2").rename(tmp_path / "last")
    with caplog.at_level(logging.INFO, logger="lolcats.training"):
        run(6)
    assert "resuming at step 4" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("last")) == ["last"]


def test_a_checkpoint_is_complete_before_it_replaces_the_last_one(tmp_path):
    """`before_commit` runs when the new checkpoint is whole at last.tmp and last is untouched."""
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param])
    save_train_state(tmp_path / "last", {"p": param}, opt, None, {"step": 2})
    seen = []
    save_train_state(tmp_path / "last", {"p": param}, opt, None, {"step": 4},
                     before_commit=lambda: seen.append(sorted(saved_states(tmp_path / "last"))))
    assert seen == [[2, 4]] and sorted(saved_states(tmp_path / "last")) == [4]


def test_nan_loss_stops_with_step_and_layer_and_keeps_the_checkpoint(tmp_path):
    model = _model()
    attention_transfer(model, batches, EVAL, TrainConfig(max_steps=1, eval_every=1), tmp_path)
    good = load_file(tmp_path / "last" / "tensors.safetensors")
    before = {k: v.detach().clone() for k, v in attention_state_names(model).items()}

    def poisoned(epoch):  # the second micro-batch holds token 127, whose embedding is NaN
        out = batches(epoch)
        out[1]["input_ids"][0, 3] = 127
        return out

    with torch.no_grad():
        model.model.embed_tokens.weight[127] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 2: attention-transfer loss of layer 0 is nan"):
        attention_transfer(model, poisoned, EVAL, TrainConfig(max_steps=4, eval_every=1), tmp_path)
    after = load_file(tmp_path / "last" / "tensors.safetensors")
    assert all(torch.equal(good[k], after[k]) for k in good)
    assert all(torch.equal(before[k], p) for k, p in attention_state_names(model).items())


def test_nan_gradient_with_a_finite_loss_stops_before_the_update_naming_the_layer(tmp_path):
    """A finite loss with a NaN gradient (the Qwen2.5 failure) is caught before the optimizer
    step; with no checkpoint yet the message says so instead of naming one that does not exist."""
    model = _model()
    before = {k: v.detach().clone() for k, v in attention_state_names(model).items()}
    weight = model.model.layers[1].self_attn.feature_map_q.weight
    weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 1: non-finite gradients in "
                       r"model\.layers\.1\.self_attn\.feature_map_q\.weight.*no checkpoint was written yet"):
        attention_transfer(model, batches, EVAL, TrainConfig(max_steps=3, eval_every=2), tmp_path)
    assert all(torch.equal(before[k], p) for k, p in attention_state_names(model).items())
    assert not (tmp_path / "last").exists()


def test_training_and_evaluation_forwards_build_no_decode_cache(tmp_path, monkeypatch):
    """Training runs the parallel attention only: a decode cache (and the state prefill it
    triggers for every layer) would cost memory and time and serve nothing."""
    from datasets import Dataset

    from lolcats_core.attention import LolcatsAttention
    from lolcats_core.evaluation.perplexity import perplexity

    def no_cache(*args, **kwargs):
        raise AssertionError("a training forward went through the decode cache")

    monkeypatch.setattr(LolcatsAttention, "_cached", no_cache)
    model = _model()
    attention_transfer(model, batches, EVAL, TrainConfig(lr=1e-2, max_steps=1, eval_every=1), tmp_path / "s1")
    add_lora(model, LoraSettings(r=4, alpha=8))
    lora_adjust(model, batches, EVAL, TrainConfig(lr=1e-3, max_steps=1, eval_every=1), tmp_path / "s2")
    rows = [{"input_ids": x.tolist(), "labels": x.tolist()} for x in EVAL[0]["input_ids"]]
    assert perplexity(model, Dataset.from_list(rows), progress=False)["tokens"] > 0


def test_stage2_gives_the_same_weights_whatever_the_process_rng(tiny_base, tmp_path):
    """LoRA is initialised from stage 2's seed, not from the random state the process happens
    to be in, and a checkpoint's tensor digest does not depend on how safetensors ordered its
    header: stage 2 recomputed in another process (a refreshed or retried task) names its
    evaluations by the same weights."""
    import json
    from pathlib import Path

    from lolcats_core import pipeline
    from lolcats_core.run_config import load_run_config
    from service.tiny import tiny_tree

    base, data_dir = tiny_base

    def cfg(run: str):
        tree = tiny_tree("rng", base, tmp_path / run, max_steps=1)
        tree["data"]["cache_dir"] = str(data_dir)
        return load_run_config(tree={**tree, "stage2": {"batch_size": 2, "max_steps": 1, "eval_every": 1,
                                                        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj"]}}})

    data = pipeline.prepare_data(cfg("a"))
    stage1 = pipeline.attention_transfer_step(cfg("a"), data)
    digests = []
    for run, draws in (("a", 7), ("b", 11)):
        torch.rand(draws)  # a different random state for each
        stage2 = pipeline.lora_step(cfg(run), data, stage1)
        digests.append(json.loads((Path(stage2["model"]) / "config.json").read_text())["weights"]["tensors_sha256"])
    assert digests[0] == digests[1]
