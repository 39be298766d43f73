"""The quality gate: rules from a config's `gate:` section and the check of metrics by them."""

import pytest

from lolcats_core.errors import ConfigError
from lolcats_core.gate import gate_rules, quality_gate


def test_rules_from_shorthands_and_explicit_rules():
    gate = {"max_perplexity_ratio": 1.1, "min_passkey_delta": 0,
            "rules": {"hellaswag_acc": {"min_delta": -0.02}}}
    assert gate_rules(gate) == {"perplexity": ("max_ratio", 1.1), "passkey_accuracy": ("min_delta", 0.0),
                                "hellaswag_acc": ("min_delta", -0.02)}
    assert gate_rules(None) == {}
    with pytest.raises(ConfigError, match="unknown setting 'max_ppl'"):
        gate_rules({"max_ppl": 1.1})
    with pytest.raises(ConfigError, match=r"gate.rules.acc: expected \{max_ratio: x\}"):
        gate_rules({"rules": {"acc": {"bigger": 1}}})


def test_checks_against_the_teacher():
    rules = {"ppl": ("max_ratio", 1.1), "acc": ("min_delta", -0.01)}
    g = quality_gate({"ppl": 10.5, "acc": 0.5}, {"ppl": 10.0, "acc": 0.52}, rules)
    assert not g.passed and g.checks["ppl"].endswith("ok") and g.checks["acc"].endswith("fail")
    assert g.summary().startswith("FAILED")
    assert quality_gate({"ppl": 10.5, "acc": 0.515}, {"ppl": 10.0, "acc": 0.52}, rules).passed
    missing = quality_gate({}, {"ppl": 20.0}, {"ppl": ("max_ratio", 1.1)})
    assert not missing.passed and "missing" in missing.checks["ppl"]
    with pytest.raises(ValueError, match="unknown rule kind"):
        quality_gate({"x": 1}, {"x": 1}, {"x": ("bigger", 1)})


def test_an_empty_gate_never_passes():
    g = quality_gate({"ppl": 1.0}, {"ppl": 2.0}, gate_rules({}))
    assert not g.passed and "no gate configured" in g.summary()


def test_not_worse_than_the_champion_within_the_tolerance():
    from lolcats_core.gate import champion_tolerance, not_worse

    rules = {"ppl": ("max_ratio", 1.1), "acc": ("min_delta", -0.01)}
    assert not_worse({"ppl": 10.05, "acc": 0.495}, {"ppl": 10.0, "acc": 0.5}, rules, 0.01).passed
    worse = not_worse({"ppl": 10.2, "acc": 0.5}, {"ppl": 10.0, "acc": 0.5}, rules, 0.01)
    assert not worse.passed and worse.checks["ppl"].endswith("worse") and worse.checks["acc"].endswith("ok")
    assert not_worse({"ppl": 10.2}, {}, rules).passed  # a champion without the metric is no obstacle
    assert champion_tolerance({"champion_tolerance": "0.02"}) == 0.02 and champion_tolerance(None) == 0.0
    assert gate_rules({"max_perplexity_ratio": 1.1, "champion_tolerance": 0.01}) == {"perplexity": ("max_ratio", 1.1)}
    with pytest.raises(ConfigError, match="champion_tolerance: expected a number >= 0"):
        gate_rules({"champion_tolerance": -0.1})
