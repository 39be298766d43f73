"""Resolve the run config of a flow run: preset name or config path, profile, overrides.

`configs/<preset>.yaml` is the config of a preset; `config=` (a path) overrides that. Every
problem is raised as `FlowConfigError` with a message that names the file and the fix, before
any model or data is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


class FlowConfigError(ValueError):
    """The flow's parameters do not name a valid run config."""


def available_presets() -> list[str]:
    """Presets that have a config file in configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def available_profiles() -> list[str]:
    """Every profile name of the shipped configs (configs/*.yaml)."""
    names = set()
    for path in CONFIG_DIR.glob("*.yaml"):
        names.update((yaml.safe_load(path.read_text()) or {}).get("profiles") or {})
    return sorted(names)


# The flow's parameter types: the Prefect UI's run form offers these as choices.
Preset = Literal[tuple(available_presets())]
Profile = Literal[tuple(available_profiles())]


def config_path(preset: str | None, config: str | None) -> Path:
    """The YAML file a flow run uses: `config` if given, else `configs/<preset>.yaml`."""
    if config:
        path = Path(config)
        if not path.is_absolute() and not path.exists():
            path = REPO / path
        if not path.is_file():
            raise FlowConfigError(f"config file {config!r} does not exist; pass an existing YAML "
                                  f"path or a preset name ({', '.join(available_presets())})")
        return path
    if not preset:
        raise FlowConfigError("give a preset (e.g. smollm2-135m) or a config path")
    path = CONFIG_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise FlowConfigError(f"unknown preset {preset!r}: there is no {path.relative_to(REPO)}. "
                              f"Known presets: {', '.join(available_presets())}; or pass "
                              "config=<path to a run config YAML>")
    return path


def load(preset: str | None = None, profile: str | None = None,
         overrides: list[str] | None = None, config: str | None = None):
    """The validated `RunConfig` of a flow run (library `ConfigError`s are re-raised with the
    file name)."""
    from lolcats_core.errors import LolcatsError
    from lolcats_core.run_config import load_run_config

    path = config_path(preset, config)
    try:
        cfg = load_run_config(path, profile, list(overrides or []))
    except LolcatsError as e:
        raise FlowConfigError(f"invalid run config {path} (profile {profile!r}, overrides "
                              f"{list(overrides or [])}): {e}. Fix the file or the override.") from None
    return cfg
