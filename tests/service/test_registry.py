"""MLflow registry on the real server: register with tags + alias, idempotent re-register,
promotion through a quality gate, artifacts landing in S3."""

import pytest

from lolcats_core.gate import quality_gate
from tasks import mlflow_registry as R

pytestmark = pytest.mark.stack


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(b"\0" * 4096)
    return d


def info(fp):
    return R.VersionInfo(fingerprint=fp, base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                         base_revision="rev-1", data_fingerprint="data-1")


def test_register_alias_and_idempotent_reregister(stack, model_dir):
    name = R.model_name("registry-test")
    assert name == "lolcats-registry-test"
    first = R.register_version(name, model_dir, info("fp-1"), metrics={"ppl": 20.5},
                               params={"preset": "registry-test"})
    assert first.created and first.version == 1 and first.uri == f"models:/{name}/1"
    again = R.register_version(name, model_dir, info("fp-1"), metrics={"ppl": 20.5})
    assert not again.created and again.version == 1
    other = R.register_version(name, model_dir, info("fp-2"), metrics={"ppl": 19.0})
    assert other.created and other.version == 2

    from mlflow import MlflowClient

    c = MlflowClient()
    assert len(c.search_model_versions(f"name = '{name}'")) == 2
    v1 = c.get_model_version(name, "1")
    assert v1.tags["lolcats.fingerprint"] == "fp-1"
    assert v1.tags["lolcats.base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert v1.tags["lolcats.base_revision"] == "rev-1"
    assert v1.tags["lolcats.data_fingerprint"] == "data-1"
    assert v1.tags["lolcats.code_commit"] and v1.tags["metric.ppl"] == "20.5"
    assert "| ppl | 20.5 |" in v1.description
    # `candidate` follows the newest registration
    assert R.version_by_alias(name, "candidate").version == "2"
    assert c.get_run(v1.run_id).data.metrics["ppl"] == 20.5
    # the files went through MLflow's artifact proxy into the S3 bucket
    from tasks.artifacts import S3Settings, client

    s = S3Settings.from_env()
    keys = [o["Key"] for o in client(s).list_objects_v2(Bucket=s.bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith(f"{v1.run_id}/artifacts/model/model.safetensors") for k in keys), keys


def test_promotion_follows_the_gate(stack, model_dir):
    name = R.model_name("gate-test")
    v = R.register_version(name, model_dir, info("gate-1"), metrics={"ppl": 30.0}).version
    rules = {"ppl": ("max_ratio", 1.10), "lambada_acc": ("min_delta", -0.01)}
    bad = quality_gate({"ppl": 30.0, "lambada_acc": 0.30}, {"ppl": 20.0, "lambada_acc": 0.30}, rules)
    assert not bad.passed and "fail" in bad.checks["ppl"] and "ok" in bad.checks["lambada_acc"]
    assert R.promote(name, v, bad) is False
    assert R.version_by_alias(name, "champion") is None
    good = quality_gate({"ppl": 21.0, "lambada_acc": 0.295}, {"ppl": 20.0, "lambada_acc": 0.30}, rules)
    assert good.passed and R.promote(name, v, good) is True
    champ = R.version_by_alias(name, "champion")
    assert champ.version == str(v) and champ.tags["gate.passed"] == "true"
    assert champ.tags["gate.summary"].startswith("PASSED")


def test_register_refuses_empty_directory(stack, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a non-empty directory"):
        R.register_version("lolcats-empty", tmp_path / "empty", info("e"))
