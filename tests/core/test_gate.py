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


def test_choose_champion_picks_the_best_passing_version():
    from lolcats_core.gate import choose_champion

    teacher = {"perplexity": 10.0, "passkey_accuracy": 1.0}
    gate = {"max_perplexity_ratio": 1.1, "min_passkey_delta": -0.1, "champion_tolerance": 0.01}

    def v(ppl, passkey=1.0):
        return {"perplexity": ppl, "passkey_accuracy": passkey}, teacher

    versions = {1: v(10.2), 2: v(11.5), 3: v(10.6), 4: v(10.1, 0.8)}  # 2 and 4 fail the gate
    choice = choose_champion(versions, gate)
    assert choice.version == 1 and [k for k, g in choice.gates.items() if g.passed] == [1, 3]
    assert choice.reasons[1].endswith("chosen") and "vs version 1: FAILED: perplexity: 10.6" in choice.reasons[3]
    # within the tolerance (10.25 <= 10.2 * 1.01) a newer version ties and wins, as in a promotion
    assert choose_champion(versions | {5: v(10.25)}, gate).version == 5
    # a trade-off (neither is not worse than the other): the newest
    assert choose_champion({1: v(10.0, 0.95), 2: v(10.5, 1.0)}, gate).version == 2
    none = choose_champion({2: v(11.5)}, gate)
    assert none.version is None and not none.gates[2].passed and none.reasons == {}
    assert choose_champion(versions, {}).version is None  # an empty gate passes nothing
