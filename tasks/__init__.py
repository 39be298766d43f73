"""Prefect tasks and the service helpers they use (S3 artifacts, MLflow registry).

Helpers here never import `lolcats_core`; the library never imports this package.
"""
