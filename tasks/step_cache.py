"""Prefect's cache over the pipeline's steps: a step whose output exists shows as Cached.

A step task's cache key is the name of its fingerprinted output (`lolcats_core.pipeline`: the
prepared data's folder, `stage1-<fp>`, `stage2-<fp>`, `eval-<who>-<fp>`; for registration a
fingerprint of the stage-2 directory, both evaluations, the gate, profile and overrides) under
the run's name. Its result (completion record, evaluation report, registration) is persisted
as JSON in the S3 bucket of `tasks.artifacts` under `prefect-results/` (`S3Results`), so a run
on any worker, a fresh one with an empty work directory included, finds it there and gets the
Cached state without running the step. The step's files are in S3 too (`tasks.step_artifacts`)
and are restored where this machine needs them.

Flows pass the saved storage block with `with_options(result_storage=result_storage())`;
`refresh_cache=True` (the flows' `refresh` parameter) recomputes: Prefect ignores the cached
result and the step ignores its earlier outputs, local or in S3 (`refreshing()`).
"""

from __future__ import annotations

import asyncio

from prefect.cache_policies import CachePolicy
from prefect.filesystems import WritableFileSystem
from pydantic import Field

from tasks import artifacts
from tasks.retry import TASK_OPTIONS

FORMAT = 1  # bump when a step task's result changes shape: results cached before are ignored
BLOCK_NAME = "steps"


class S3Results(WritableFileSystem):
    """Prefect result storage in the artifact store's S3 bucket. Endpoint, bucket and keys come
    from the environment at each call (`artifacts.S3Settings`): the saved block holds none."""

    _block_type_name = "lolcats S3 results"
    _block_type_slug = "lolcats-s3-results"
    _description = "Results of lolcats step tasks in the bucket of LOLCATS_S3_BUCKET (keys from the environment)."

    prefix: str = Field(default="prefect-results", description="key prefix in the bucket")

    def read_path(self, path: str, _sync: bool = True) -> bytes:
        body = artifacts.read_object(f"{self.prefix}/{path}")
        if body is None:
            raise FileNotFoundError(f"no cached result {self.prefix}/{path} in S3")
        return body

    def write_path(self, path: str, content: bytes, _sync: bool = True) -> str:
        artifacts.write_object(f"{self.prefix}/{path}", content)
        return path

    async def aread_path(self, path: str) -> bytes:
        return await asyncio.to_thread(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await asyncio.to_thread(self.write_path, path, content)


def result_storage() -> S3Results:
    """The `S3Results` block, saved on the Prefect server (created or updated: Prefect accepts
    only saved storage blocks on a task)."""
    block = S3Results()
    block.save(BLOCK_NAME, overwrite=True)
    return block


def options(key_fn) -> dict:
    """Decorator options of a cached step task: `TASK_OPTIONS` with the cache key
    `key_fn(task_run_context, parameters)` and its result persisted as JSON."""
    return TASK_OPTIONS | {"cache_policy": CachePolicy.from_cache_key_fn(key_fn), "persist_result": True,
                           "result_serializer": "json"}


def cache_key(cfg, output: str) -> str:
    """The cache key of a step of run `cfg.name` whose output is named `output`."""
    return f"v{FORMAT}/{cfg.name}/{output}"


def refreshing() -> bool:
    """Whether the running task must recompute: the first attempt of a task run with
    `refresh_cache` (else Prefect's PREFECT_TASKS_REFRESH_CACHE setting). Its retries resume what
    that attempt did; False outside a task."""
    from prefect.context import TaskRunContext
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

    ctx = TaskRunContext.get()
    if ctx is None or ctx.task_run.run_count > 1:
        return False
    flag = ctx.task.refresh_cache
    return bool(PREFECT_TASKS_REFRESH_CACHE.value() if flag is None else flag)


def data_key(ctx, p: dict) -> str:
    """prepare_data: the data's folder name and the base model's fingerprint (its result)."""
    from lolcats_core import pipeline
    from lolcats_core.presets import base_model_ref

    cfg = p["cfg"]
    fp = pipeline.fingerprint(pipeline.data_dir(cfg).name, base_model_ref(cfg.model).fingerprint)
    return cache_key(cfg, f"data-{fp}")


def stage1_key(ctx, p: dict) -> str:
    """attention_transfer: its directory name."""
    from lolcats_core import pipeline

    return cache_key(p["cfg"], pipeline.stage1_dir(p["cfg"], p["base"]["fingerprint"], p["data"].fingerprint).name)


def stage2_key(ctx, p: dict) -> str:
    """lora_adjust: its directory name."""
    from lolcats_core import pipeline

    return cache_key(p["cfg"], pipeline.stage2_dir(p["cfg"], p["stage1"]).name)
