"""The quality gate of a run config (`gate:` section) as rules for `registry.quality_gate`.

    gate:
      max_perplexity_ratio: 1.10      # held-out perplexity <= 1.10 x the teacher's
      max_lambada_ppl_ratio: 1.10     # LAMBADA perplexity <= 1.10 x the teacher's
      min_passkey_delta: 0.0          # passkey accuracy >= the teacher's + delta
      rules: {<metric>: {max_ratio: x} | {min_delta: x}}   # any flat metric (see metrics.py)

An empty gate never promotes (there is nothing to check against).
"""

from __future__ import annotations

SHORTHANDS = {
    "max_perplexity_ratio": ("perplexity", "max_ratio"),
    "max_lambada_ppl_ratio": ("lambada_ppl", "max_ratio"),
    "min_passkey_delta": ("passkey_accuracy", "min_delta"),
    "min_zero_shot_delta": ("zero_shot_average", "min_delta"),
}


class GateConfigError(ValueError):
    """The `gate:` section has a setting this module does not know."""


def gate_rules(gate: dict | None) -> dict[str, tuple[str, float]]:
    """{metric: (kind, bound)} from a config's `gate:` section; raises on unknown settings."""
    rules: dict[str, tuple[str, float]] = {}
    for key, value in (gate or {}).items():
        if key in SHORTHANDS:
            metric, kind = SHORTHANDS[key]
            rules[metric] = (kind, float(value))
        elif key == "rules":
            for metric, spec in (value or {}).items():
                if not isinstance(spec, dict) or len(spec) != 1 or \
                        next(iter(spec)) not in ("max_ratio", "min_delta"):
                    raise GateConfigError(f"gate.rules.{metric}: expected {{max_ratio: x}} or "
                                          f"{{min_delta: x}}, got {spec!r}")
                kind, bound = next(iter(spec.items()))
                rules[metric] = (kind, float(bound))
        else:
            raise GateConfigError(f"gate: unknown setting {key!r}; known: "
                                  f"{sorted(SHORTHANDS) + ['rules']}")
    return rules
