"""Prefect tasks and the service helpers they use (S3 artifacts, MLflow registry).

The library (`lolcats_core`) never imports this package; the tasks call it, and the helpers
reuse its sha256 (`lolcats_core.hashing`) and step-directory marker (`pipeline.DONE`).
"""
