"""Prefect flows composing the tasks in `tasks/` (see deploy/prefect.yaml)."""
