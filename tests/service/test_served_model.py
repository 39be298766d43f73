"""The registered pyfunc model served by `mlflow models serve` from a virtualenv MLflow builds from
the model's own requirements: a good request answers, an
oversized `max_new_tokens`, an empty or malformed prompt are refused with HTTP 400 and a one-line
message (no stack trace), and the model is self-contained: it loads and generates in a Python
that cannot see the repository checkout (its code and base model travel with it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import wait_for

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
NAME = "lolcats-tiny-serve"
LIMIT = 64  # LOLCATS_MAX_NEW_TOKENS of the server


@pytest.fixture(scope="module")
def registered(stack, tiny_root):
    """A tiny adapter checkpoint (random 2-layer Llama base from a local directory, LoRA)
    logged by tasks.pyfunc_logging, registered as `lolcats-tiny-serve` v1 @champion."""
    import mlflow
    import torch

    from lolcats_core import LinearizeConfig, LoraSettings, add_lora, linearize, load_base_model, save_linearized
    from tasks.pyfunc_logging import log_pyfunc_model

    model, tok, _ = load_base_model(str(tiny_root / "base"))
    linearize(model, LinearizeConfig(feature_map="hedgehog", feature_dim=16, attention="hybrid", window=16))
    model = add_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    ckpt = save_linearized(model, tiny_root / "serve-ckpt", tokenizer=tok)
    mlflow.set_tracking_uri(stack.mlflow_uri)
    mlflow.set_experiment("lolcats-serve-test")
    with mlflow.start_run() as run:
        pass
    info = log_pyfunc_model(run.info.run_id, ckpt)
    mv = mlflow.register_model(info.model_uri, NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", mv.version)
    return {"uri": f"models:/{NAME}@champion", "checkpoint": ckpt}


def test_logged_model_lists_its_requirements_code_and_example(registered, tmp_path):
    import mlflow
    import yaml

    d = Path(mlflow.artifacts.download_artifacts(artifact_uri=registered["uri"], dst_path=str(tmp_path)))
    reqs = (d / "requirements.txt").read_text().split()
    pinned = {r.split("==")[0] for r in reqs if "==" in r}
    assert {"torch", "transformers", "peft", "safetensors", "tokenizers", "mlflow"} <= pinned, reqs
    assert not [r for r in reqs if "+" in r], "a local version label (+cpu) would not resolve on a GPU host"
    spec = yaml.safe_load((d / "MLmodel").read_text())
    pyfunc = spec["flavors"]["python_function"]
    assert {"lolcats_core", "lolcats_kernels"} <= {p.name for p in (d / pyfunc["code"]).iterdir()}
    assert set(pyfunc["artifacts"]) == {"checkpoint", "base_model"}  # the local base travels too
    assert spec["metadata"]["lolcats.base_kind"] == "local"
    assert pyfunc["config"]["max_new_tokens_limit"] == 1024
    assert (d / "serving_input_example.json").exists() and spec.get("saved_input_example_info")


def test_model_loads_without_the_checkout(registered, tmp_path):
    """A Python with site-packages but neither the checkout nor the editable install of
    lolcats (`-S`: no .pth files) loads the model from the registry and generates."""
    site = sysconfig.get_paths()["purelib"]
    code = f"""
import sys
sys.path = [p for p in sys.path if not p.startswith({str(REPO)!r})] + [{site!r}]
import importlib.util
assert importlib.util.find_spec("lolcats_core") is None, "lolcats_core visible before loading"
import mlflow
m = mlflow.pyfunc.load_model({registered["uri"]!r})
import lolcats_core, lolcats_kernels
assert not lolcats_core.__file__.startswith({str(REPO)!r}), lolcats_core.__file__
assert not lolcats_kernels.__file__.startswith({str(REPO)!r}), lolcats_kernels.__file__
out = m.predict(["Hello, my name is"], params={{"max_new_tokens": 3}})
assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str), out
print("OK", lolcats_core.__file__)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-4000:]


def _post(url: str, body, timeout: float = 60) -> tuple[int, dict, float]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    return status, json.loads(text), time.monotonic() - t0


def _refused(status: int, body: dict, *words: str) -> str:
    assert status == 400, (status, body)
    msg = body["message"]
    assert "stack_trace" not in body and "Traceback" not in json.dumps(body), body
    assert "\n" not in msg and len(msg) < 300, msg
    assert all(w in msg for w in words), msg
    return msg


def _pyenv_bin() -> Path:
    """The folder of `pyenv`, which MLflow's virtualenv environment manager runs."""
    found = shutil.which("pyenv") or (Path.home() / ".pyenv" / "bin" / "pyenv")
    assert Path(found).exists(), ("`mlflow models serve --env-manager virtualenv` needs pyenv "
                                  "(https://github.com/pyenv/pyenv#installation) on PATH or in ~/.pyenv")
    return Path(found).parent


@pytest.fixture(scope="module")
def server(stack, registered, tmp_path_factory):
    """`mlflow models serve -m models:/lolcats-tiny-serve@champion --env-manager virtualenv`:
    MLflow builds a fresh virtualenv from the model's own requirements (Python from pyenv,
    packages by pip) and serves from it, outside the checkout; stopped by PID (process group).
    The environment is cached in ~/.mlflow/envs by the requirements' hash: the first build takes
    a few minutes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cwd = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "MLFLOW_TRACKING_URI": stack.mlflow_uri, "LOLCATS_MAX_NEW_TOKENS": str(LIMIT),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "PATH": os.pathsep.join([str(_pyenv_bin()), os.environ.get("PATH", "")])}
    log = (cwd / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             registered["uri"], "--env-manager", "virtualenv", "--host", "127.0.0.1",
                             "-p", str(port), "-w", "1"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{(cwd / 'serve.log').read_text()[-4000:]}")
        try:
            return urllib.request.urlopen(url + "/ping", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, 720, "the model server (building its virtualenv)")
        yield {"url": url + "/invocations", "proc": proc, "log": cwd / "serve.log"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
        log.close()


def test_served_model_answers_and_refuses_bad_requests_cleanly(server):
    # served from the virtualenv MLflow built, not from this Python
    assert "/.mlflow/envs/" in server["log"].read_text()
    url = server["url"]
    status, body, _ = _post(url, {"inputs": ["Hello, my name is"], "params": {"max_new_tokens": 4}})
    assert status == 200, body
    (text,) = body["predictions"]
    assert isinstance(text, str)
    # a DataFrame of prompts; "Yo" is 2 tokens, fewer than the 4 attention sinks
    status, body, _ = _post(url, {"dataframe_split": {"columns": ["prompt"], "data": [["Hi"], ["Yo"]]},
                                  "params": {"max_new_tokens": 2}})
    assert status == 200 and len(body["predictions"]) == 2, body

    # over the limit: refused at once, the limit named
    status, body, seconds = _post(url, {"inputs": ["Hello"], "params": {"max_new_tokens": 100_000_000}})
    _refused(status, body, "max_new_tokens", str(LIMIT), "100000000")
    assert seconds < 10
    _refused(*_post(url, {"inputs": ["Hello"], "params": {"max_new_tokens": LIMIT + 1}})[:2], str(LIMIT))
    _refused(*_post(url, {"inputs": ["Hello"], "params": {"max_new_tokens": 0}})[:2], "max_new_tokens")
    _refused(*_post(url, {"inputs": ["Hello"], "params": {"temperature": -1.0}})[:2], "temperature")

    # empty and malformed prompts
    _refused(*_post(url, {"inputs": [""]})[:2], "prompt 0 is empty")
    _refused(*_post(url, {"inputs": ["fine", "   "]})[:2], "prompt 1 is empty")
    _refused(*_post(url, {"inputs": [{"a": 1}]})[:2], "prompt 0 is of type")
    # refused by MLflow's own request parsing and schema checks (their messages, no traceback)
    for bad in ({"inputs": []}, {"nothing": 1}, b"not json",
                {"inputs": ["Hello"], "params": {"max_new_tokens": "abc"}}):
        status, body, _ = _post(url, bad)
        assert status == 400 and "Traceback" not in json.dumps(body) and "stack_trace" not in body, (bad, body)

    # still serving after the refusals
    status, body, _ = _post(url, {"inputs": ["Hello"], "params": {"max_new_tokens": LIMIT}})
    assert status == 200, body
    assert server["proc"].poll() is None
