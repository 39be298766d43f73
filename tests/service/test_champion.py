"""A champion that never gets worse, on the real MLflow server: a worse candidate does not take
the `champion` alias, a stricter gate demotes a champion that fails it (the alias goes to the
best version that passes it), and a re-run of the flow with a stricter gate and a changed
evaluation records the evaluation and demotes."""

from __future__ import annotations

import pytest

from tasks import mlflow_registry as R

pytestmark = pytest.mark.stack

TEACHER = {"perplexity": 10.0, "passkey_accuracy": 1.0}
GATE = {"max_perplexity_ratio": 1.2, "min_passkey_delta": -0.5, "champion_tolerance": 0.01}


@pytest.fixture
def register(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 64)

    def reg(name: str, fp: str, ppl: float, passkey: float = 1.0) -> str:
        info = R.VersionInfo(fingerprint=fp, base_model="base", base_revision="r", data_fingerprint="d")
        return str(R.register_version(name, tmp_path / "model", info, teacher_metrics=TEACHER,
                                      metrics={"perplexity": ppl, "passkey_accuracy": passkey}).version)
    return reg


def _champion(name: str) -> str | None:
    mv = R.version_by_alias(name, "champion")
    return mv.version if mv else None


def test_a_worse_candidate_does_not_take_the_champion_alias(stack, register):
    name = "lolcats-champ-worse"
    v1 = register(name, "w1", 11.0)
    assert R.judge(name, v1, GATE).promoted and _champion(name) == v1
    v2 = register(name, "w2", 11.5)  # passes the gate (<= 12), but worse than 11.0 + 1 %
    verdict = R.judge(name, v2, GATE)
    assert not verdict.champion and "worse than @champion version 1" in verdict.reason
    assert _champion(name) == v1 and "perplexity: 11.5 vs champion 11" in \
        R.version_by_alias(name, "candidate").tags["champion.check"]
    v3 = register(name, "w3", 11.05)  # within the 1 % tolerance
    assert R.judge(name, v3, GATE).promoted and _champion(name) == v3


def test_a_stricter_gate_demotes_a_failing_champion(stack, register):
    name = "lolcats-champ-strict"
    v1 = register(name, "s1", 11.0)
    assert R.judge(name, v1, GATE).promoted
    strict = GATE | {"max_perplexity_ratio": 1.05}
    verdict = R.judge(name, v1, strict)  # the same version, re-gated
    assert verdict.demoted and _champion(name) is None
    from tasks.tracking import client

    tags = client().get_model_version(name, v1).tags
    assert tags["gate.passed"] == "false" and "perplexity: 11 vs teacher 10 (<= 1.05x): fail" in tags["gate.summary"]
    # a new version judged by the stricter gate: the failing champion goes, a passing one takes over
    assert R.judge(name, v1, GATE).promoted
    v2 = register(name, "s2", 10.4, passkey=0.995)  # not worse than v1 within the tolerance
    assert R.judge(name, v2, strict).promoted and _champion(name) == v2
    assert client().get_model_version(name, v1).tags["gate.passed"] == "false"
    # a gate stricter on passkey fails the champion v2 but passes v1: the alias goes back to v1
    verdict = R.judge(name, v2, GATE | {"min_passkey_delta": 0.0})
    assert verdict.demoted and verdict.reason == "demoted from @champion; handed to version 1"
    assert _champion(name) == v1
    t1, t2 = (client().get_model_version(name, v).tags for v in (v1, v2))
    assert t1["gate.passed"] == "true" and t2["gate.passed"] == "false"
    assert t1["champion.reason"].startswith("took @champion from version 2, which fails the gate")
    assert t2["champion.reason"] == "lost @champion: fails the gate; handed to version 1"


def test_rerun_with_stricter_gate_and_new_evaluation(stack, tiny_root, tmp_path):
    """A flow run, then a re-run with unchanged training, a changed evaluation and a stricter
    gate: nothing registered, the version's tags hold the new evaluation, the champion goes."""
    from flows.linearize import linearize
    from tasks.tracking import client
    from tiny import tiny_tree, write_config

    tree = tiny_tree("tiny-champ", tiny_root / "base", tiny_root)
    first = linearize(config=str(write_config(tmp_path / "a.yaml", tree)), profile=None,
                      overrides=["stage1.lr=1e-2"])
    assert first["created"] and first["champion"]
    mv = client().get_model_version("lolcats-tiny-champ", "1")
    assert mv.tags["lolcats.overrides"] == "stage1.lr=1e-2" and "sharegpt" in mv.tags["lolcats.data_sources"]
    assert '"torch"' in mv.tags["lolcats.packages"] and "teacher.perplexity" in mv.tags
    tree["eval"]["ppl_max_rows"] = 2
    tree["gate"] = {"max_perplexity_ratio": 0.01}
    again = linearize(config=str(write_config(tmp_path / "b.yaml", tree)), overrides=["stage1.lr=1e-2"])
    assert not again["created"] and again["version"] == 1 and not again["champion"]
    mv = client().get_model_version("lolcats-tiny-champ", "1")
    assert "champion" not in mv.aliases and mv.tags["gate.passed"] == "false"
    assert mv.tags["lolcats.evaluation_run_id"] == again["mlflow_run_id"]
    run_ppl = client().get_run(again["mlflow_run_id"]).data.metrics["linearized.perplexity"]
    assert float(mv.tags["metric.perplexity"]) == pytest.approx(run_ppl, rel=1e-5)
