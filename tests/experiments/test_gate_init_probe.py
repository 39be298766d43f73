"""experiments/gate_init_probe.py: its half-lives are those of the gate the attention applies."""

import math
import sys
from pathlib import Path

import torch

from lolcats_core import LinearizeConfig, linearize, save_linearized
from lolcats_core.convert import linearized_attentions
from lolcats_core.presets import load_base_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import gate_init_probe  # noqa: E402


def test_half_life_of_the_initial_bias():
    assert round(gate_init_probe.half_life(8.0)) == 33065  # g = 0.99998, the untrained gate
    assert 600 < gate_init_probe.half_life(4.0) < 620


def test_held_out_half_lives_include_the_projection_of_the_input(tiny_model_dir, tmp_path):
    model, _, _ = load_base_model(str(tiny_model_dir))
    linearize(model, LinearizeConfig(window=4, gate="scalar", softmax_layers=[]))
    first, second = linearized_attentions(model)[:2]
    with torch.no_grad():
        second.state_gate.weight.normal_(std=0.5)  # a decay that depends on the token
    save_linearized(model, tmp_path / "ckpt")
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    lives = gate_init_probe.gate_half_lives(tmp_path / "ckpt", ids)
    assert sorted(lives) == [first.layer_idx, second.layer_idx]
    median, decile = lives[first.layer_idx]
    assert math.isclose(median, gate_init_probe.half_life(8.0), rel_tol=1e-3)
    assert math.isclose(decile, median, rel_tol=1e-3)  # the bias alone: one decay for every token
    median, decile = lives[second.layer_idx]
    assert decile < gate_init_probe.half_life(8.0) and decile < median  # some tokens decay faster
