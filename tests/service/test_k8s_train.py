"""The Kubernetes manifests of training: the multi-node job (deploy/k8s-train-job.yaml rendered by
deploy/k8s_train.py) and the GPU work pool's flow pods hold the GPUs their torchrun asks for."""

import json
import sys
from pathlib import Path

import yaml

from lolcats_core.cli import build_parser
from lolcats_core.run_config import load_run_config

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))
from k8s_train import render  # noqa: E402


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_multinode_job_renders_with_torchrun_arguments_matching_its_gpus():
    """llama3-70b (gpu profile: 8 GPUs per node) on 2 nodes: 2 indexed pods of 8 GPUs each run
    torchrun --nnodes 2 --nproc-per-node 8, rendezvous at pod 0 through the headless Service,
    and `lolcats train` reads the config the pods see, with its files on the shared volume."""
    text = render("configs/llama3-70b.yaml", "gpu", 2, "registry.example.com/lolcats:1",
                  overrides=["distributed.nodes=2"])
    service, job = yaml.safe_load_all(text)
    name = job["metadata"]["name"]
    assert name == "lolcats-llama3-70b-stage2" and len(name) + len("-1") <= 63  # pod hostnames are DNS labels
    assert service["kind"] == "Service" and service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": name}
    (port,) = service["spec"]["ports"]

    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2 and pod["subdomain"] == name
    args = container["args"]
    assert container["command"] == ["torchrun"] and all(isinstance(a, str) for a in args)
    assert _option(args, "--nnodes") == "2" and _option(args, "--nproc-per-node") == "8"
    for kind in ("limits", "requests"):
        assert container["resources"][kind]["nvidia.com/gpu"] == 8
    assert _option(args, "--rdzv-backend") == "c10d" and _option(args, "--rdzv-id") == name
    assert _option(args, "--rdzv-endpoint") == f"{name}-0.{name}:{port['port']}"
    assert {"name": "rendezvous", "containerPort": port["port"]} in container["ports"]

    assert args[args.index("-m") + 1:args.index("train") + 1] == ["lolcats_core.cli", "train"]
    train = build_parser().parse_args(args[args.index("train"):])
    assert (train.stage, train.config, train.profile) == (2, "configs/llama3-70b.yaml", "gpu")
    cfg = load_run_config(REPO / train.config, train.profile, train.set)
    assert cfg.distributed.world_size == 2 * 8 and cfg.output_dir == "/shared/runs"
    assert cfg.data.cache_dir == "/shared/data"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["shared"] == "/shared" and volumes["shared"]["persistentVolumeClaim"]["claimName"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_gpu_deployments_get_the_gpus_their_config_launches():
    """Each deployment on the `gpu` pool asks for at least `distributed.gpus` GPUs (its
    job_variables.gpu_count, else the pool template's default): the flow pod's torchrun finds them."""
    template = json.loads((REPO / "deploy" / "k8s-gpu-job-template.json").read_text())
    default = template["variables"]["properties"]["gpu_count"]["default"]
    deployments = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())["deployments"]
    gpu = [d for d in deployments if d["work_pool"]["name"] == "gpu"]
    assert gpu
    for d in gpu:
        p = d["parameters"]
        cfg = load_run_config(REPO / "configs" / f"{p['preset']}.yaml", p.get("profile"))
        assert cfg.distributed.nodes == 1, d["name"]  # several nodes: deploy/k8s_train.py
        assert d["work_pool"].get("job_variables", {}).get("gpu_count", default) >= cfg.distributed.gpus, d["name"]
