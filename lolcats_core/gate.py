"""The quality gate of a run config (`gate:` section): its rules, and the check of a model's
metrics against its teacher's by them.

    gate:
      max_perplexity_ratio: 1.10      # held-out perplexity <= 1.10 x the teacher's
      max_lambada_ppl_ratio: 1.10     # LAMBADA perplexity <= 1.10 x the teacher's
      min_passkey_delta: 0.0          # passkey accuracy >= the teacher's + delta
      min_zero_shot_delta: -0.01      # zero-shot average >= the teacher's - 0.01
      rules: {<metric>: {max_ratio: x} | {min_delta: x}}   # any flat metric name
      champion_tolerance: 0.0         # how much worse than the champion a new one may be

An empty gate never passes (there is nothing to check against). A model that passes becomes
champion only if it is not worse than the current champion on the gate's metrics
(`not_worse`): lower-is-better metrics (`max_ratio` rules) by at most `champion_tolerance`
relative (0.01: 1 % higher), higher-is-better ones (`min_delta` rules) by at most
`champion_tolerance` absolute. When the champion fails a (stricter) gate, `choose_champion`
picks its successor among all versions: the best one passing the gate, or none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ConfigError

RULE_KINDS = ("max_ratio", "min_delta")
CHAMPION_TOLERANCE = "champion_tolerance"
SHORTHANDS = {
    "max_perplexity_ratio": ("perplexity", "max_ratio"),
    "max_lambada_ppl_ratio": ("lambada_ppl", "max_ratio"),
    "min_passkey_delta": ("passkey_accuracy", "min_delta"),
    "min_zero_shot_delta": ("zero_shot_average", "min_delta"),
}


def gate_rules(gate: dict | None) -> dict[str, tuple[str, float]]:
    """{metric: (kind, bound)} from a config's `gate:` section; `ConfigError` on unknown settings."""
    rules: dict[str, tuple[str, float]] = {}
    for key, value in (gate or {}).items():
        if key in SHORTHANDS:
            metric, kind = SHORTHANDS[key]
            rules[metric] = (kind, float(value))
        elif key == CHAMPION_TOLERANCE:
            champion_tolerance(gate)
        elif key == "rules":
            for metric, spec in (value or {}).items():
                if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in RULE_KINDS:
                    raise ConfigError(f"gate.rules.{metric}: expected {{max_ratio: x}} or "
                                      f"{{min_delta: x}}, got {spec!r}")
                kind, bound = next(iter(spec.items()))
                rules[metric] = (kind, float(bound))
        else:
            raise ConfigError(f"gate: unknown setting {key!r}; known: "
                              f"{sorted(SHORTHANDS) + ['rules', CHAMPION_TOLERANCE]}")
    return rules


def champion_tolerance(gate: dict | None) -> float:
    """The gate's `champion_tolerance` (default 0: never worse than the champion)."""
    raw = (gate or {}).get(CHAMPION_TOLERANCE, 0.0)
    try:
        tol = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"gate.{CHAMPION_TOLERANCE}: expected a number >= 0, got {raw!r}") from None
    if not (math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"gate.{CHAMPION_TOLERANCE}: expected a number >= 0, got {raw!r}")
    return tol


@dataclass
class GateResult:
    """Outcome of a quality gate: `passed` plus one human-readable line per check."""

    passed: bool
    checks: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return ("PASSED" if self.passed else "FAILED") + ": " + "; ".join(
            f"{k}: {v}" for k, v in self.checks.items())


def quality_gate(metrics: dict[str, float], teacher: dict[str, float],
                 rules: dict[str, tuple[str, float]]) -> GateResult:
    """Compare student `metrics` with the `teacher`'s by `rules`:

    `{"ppl": ("max_ratio", 1.10)}`   student <= 1.10 * teacher (lower is better)
    `{"acc": ("min_delta", -0.01)}`  student >= teacher - 0.01 (higher is better)
    A metric missing on either side fails its check; no rules fail the gate.
    """
    if not rules:
        return GateResult(False, {"gate": "no gate configured: not promoted"})
    checks, ok = {}, True
    for key, (kind, bound) in rules.items():
        s, t = metrics.get(key), teacher.get(key)
        if s is None or t is None or not math.isfinite(s):
            checks[key], ok = f"missing or non-finite ({s} vs teacher {t})", False
            continue
        if kind == "max_ratio":
            good = s <= bound * t
            checks[key] = f"{s:.4g} vs teacher {t:.4g} (<= {bound:g}x): {'ok' if good else 'fail'}"
        elif kind == "min_delta":
            good = s >= t + bound
            checks[key] = f"{s:.4g} vs teacher {t:.4g} (>= {bound:+g}): {'ok' if good else 'fail'}"
        else:
            raise ValueError(f"quality_gate: unknown rule kind {kind!r} for {key!r}; use one of {RULE_KINDS}")
        ok &= good
    return GateResult(ok, checks)


def not_worse(metrics: dict[str, float], champion: dict[str, float],
              rules: dict[str, tuple[str, float]], tolerance: float = 0.0) -> GateResult:
    """Is a model with `metrics` no worse than the `champion` on the metrics of `rules`?

    `max_ratio` metrics (lower is better): metrics[k] <= champion[k] * (1 + tolerance);
    `min_delta` metrics (higher is better): metrics[k] >= champion[k] - tolerance.
    A metric the champion lacks is no obstacle; one the model lacks fails its check.
    """
    checks, ok = {}, True
    for key, (kind, _) in rules.items():
        s, c = metrics.get(key), champion.get(key)
        if c is None or not math.isfinite(c):
            checks[key] = f"champion has no {key}: ok"
            continue
        if s is None or not math.isfinite(s):
            checks[key], ok = f"missing or non-finite ({s} vs champion {c:.4g})", False
            continue
        if kind == "max_ratio":
            good = s <= c * (1 + tolerance)
            checks[key] = f"{s:.4g} vs champion {c:.4g} (<= +{tolerance:g} rel): {'ok' if good else 'worse'}"
        elif kind == "min_delta":
            good = s >= c - tolerance
            checks[key] = f"{s:.4g} vs champion {c:.4g} (>= -{tolerance:g}): {'ok' if good else 'worse'}"
        else:
            raise ValueError(f"not_worse: unknown rule kind {kind!r} for {key!r}; use one of {RULE_KINDS}")
        ok &= good
    return GateResult(ok, checks)


@dataclass
class ChampionChoice:
    """Outcome of `choose_champion`: the `version` to hold the alias (None: no version passes),
    each version's gate verdict and, for the passing ones, why each is or is not chosen."""

    version: int | None
    gates: dict[int, GateResult]
    reasons: dict[int, str]


def choose_champion(versions: dict[int, tuple[dict[str, float], dict[str, float]]],
                    gate: dict | None) -> ChampionChoice:
    """Which of `versions` ({version: (metrics, teacher metrics)}) should be champion by `gate`.

    Only versions passing the gate (`quality_gate`) qualify. Among them the best on the gate's
    metrics wins: the one `not_worse` (within `champion_tolerance`) than the most other passing
    versions, the newest on a tie, as a newer version within the tolerance takes the alias in
    an ordinary promotion too.
    """
    rules, tol = gate_rules(gate), champion_tolerance(gate)
    gates = {v: quality_gate(m, t, rules) for v, (m, t) in versions.items()}
    passing = sorted(v for v, g in gates.items() if g.passed)
    if not passing:
        return ChampionChoice(None, gates, {})
    beats = {v: sum(not_worse(versions[v][0], versions[o][0], rules, tol).passed
                    for o in passing if o != v) for v in passing}
    best = max(passing, key=lambda v: (beats[v], v))
    return ChampionChoice(best, gates, {v: _choice_reason(v, best, beats, versions, rules, tol)
                                        for v in passing})


def _choice_reason(v: int, best: int, beats: dict[int, int], versions: dict, rules: dict,
                   tol: float) -> str:
    """Why passing version `v` is (or is not) the `best` of `choose_champion`."""
    head = f"not worse than {beats[v]} of the {len(beats) - 1} other passing versions"
    if v == best:
        return head + ": the most (newest on a tie), chosen"
    vs = not_worse(versions[v][0], versions[best][0], rules, tol)
    return f"{head}, version {best} than {beats[best]}; vs version {best}: {vs.summary()}"
