"""Render deploy/k8s-train-job.yaml for one training stage of a run config (multi-node torchrun).

    python deploy/k8s_train.py --config configs/llama3-70b.yaml --profile gpu --stage 1 \\
        --image registry.example.com/lolcats:latest > stage1.yaml
    kubectl apply -f stage1.yaml

The node count and GPUs per node come from the config's `distributed.nodes` and
`distributed.gpus`; every pod runs `torchrun --nnodes NODES --nproc-per-node GPUS` with a c10d
rendezvous on pod 0 (headless Service). The ranks share the run's files through the
ReadWriteMany volume mounted at /shared: the stage runs with `output_dir` and `data.cache_dir`
there (deploy/CLUSTER.md, section 8).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from string import Template

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("k8s-train-job.yaml")
SHARED = "/shared"  # the mount point of the shared volume in the template
SHARED_SETTINGS = [f"output_dir={SHARED}/runs", f"data.cache_dir={SHARED}/data"]


def job_name(run_name: str, stage: int) -> str:
    """A DNS-1123 label for the stage's Job and Service (pod hostnames add "-<index>")."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")
    return f"lolcats-{slug}"[:50].rstrip("-") + f"-stage{stage}"


def train_args(config: str, profile: str | None, stage: int, overrides: list[str]) -> list[str]:
    """The arguments of `lolcats train` in every pod (the config path as the image sees it)."""
    args = ["--stage", str(stage), "--config", config, *(["--profile", profile] if profile else [])]
    for setting in SHARED_SETTINGS + list(overrides):
        args += ["--set", setting]
    return args


def render(config: str, profile: str | None, stage: int, image: str, namespace: str = "lolcats",
           shared_pvc: str = "lolcats-shared", memory: str = "1800Gi", overrides: list[str] = ()) -> str:
    """The manifests (a headless Service and an Indexed Job) as YAML text; the config is loaded
    and validated here, relative to the repository (the image's working directory)."""
    sys.path.insert(0, str(REPO))
    from lolcats_core.run_config import load_run_config

    path = Path(config) if Path(config).is_absolute() else REPO / config
    cfg = load_run_config(path, profile, [*SHARED_SETTINGS, *overrides])
    args = train_args(config, profile, stage, overrides)
    return Template(TEMPLATE.read_text()).substitute(
        JOB=job_name(cfg.name, stage), NAMESPACE=namespace, IMAGE=image, SHARED_PVC=shared_pvc,
        MEMORY=memory, NODES=cfg.distributed.nodes, GPUS_PER_NODE=cfg.distributed.gpus,
        TRAIN_ARGS=", ".join(json.dumps(a) for a in args))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="run config, relative to the repository (the image's workdir)")
    p.add_argument("--profile")
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--image", required=True, help="the lolcats image (CUDA torch, this checkout)")
    p.add_argument("--namespace", default="lolcats")
    p.add_argument("--shared-pvc", default="lolcats-shared", help="ReadWriteMany claim mounted at /shared")
    p.add_argument("--memory", default="1800Gi", help="host memory per pod (every rank loads the model on the host)")
    a = p.parse_args(argv)
    print(render(a.config, a.profile, a.stage, a.image, a.namespace, a.shared_pvc, a.memory, a.set), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
