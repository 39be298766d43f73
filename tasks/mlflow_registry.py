"""MLflow model registry helpers: idempotent registration, `candidate`/`champion` aliases.

A model here is just a directory of files plus metadata; nothing depends on what the files
are. Names are `lolcats-<preset>`. Every version carries the tags

    lolcats.fingerprint       idempotency key: fingerprint of all inputs of the pipeline
    lolcats.base_model        base model id          lolcats.base_revision  its revision
    lolcats.data_fingerprint  hash of the data       lolcats.code_commit    git commit of the code
    metric.<name>             evaluation metrics (also logged on the source run): always the
                              latest evaluation (`record_evaluation` replaces them)
    teacher.<name>            the teacher's metrics of that evaluation (to re-run the gate)
    lolcats.evaluation_run_id the MLflow run of that evaluation
    gate.passed, gate.summary the latest gate verdict; champion.check: the comparison with the
                              champion it had to beat (or with the other passing versions)
    champion.reason           why the version took or lost `champion` when a champion failed
                              a gate

and its description holds a markdown table of the evaluation, so the registry page shows it.
`judge` decides the `champion` alias: a version takes it only when it passes the gate and is
not worse than the current champion on the gate's metrics; a champion that fails the current
gate loses it to the best version passing that gate by its recorded metrics, if any (`_hand_back`).
`register_version` first looks for a version with the same fingerprint and returns it instead
of registering twice. Tracking server: MLFLOW_TRACKING_URI (checked up front, see health.py).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.health import check_mlflow

if TYPE_CHECKING:
    from lolcats_core.gate import GateResult

log = logging.getLogger("lolcats.registry")
TAG = "lolcats."
CANDIDATE, CHAMPION = "candidate", "champion"


def model_name(preset: str) -> str:
    """Registered-model name of a preset: `lolcats-<preset>`."""
    return f"lolcats-{preset}"


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """Current commit of the code (with `-dirty` if the tree has changes), or `unknown`."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class VersionInfo:
    """What a model version was made from. `fingerprint` decides idempotency."""

    fingerprint: str
    base_model: str
    base_revision: str
    data_fingerprint: str
    code_commit: str = field(default_factory=git_commit)
    extra_tags: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        t = {f"{TAG}fingerprint": self.fingerprint, f"{TAG}base_model": self.base_model,
             f"{TAG}base_revision": self.base_revision,
             f"{TAG}data_fingerprint": self.data_fingerprint,
             f"{TAG}code_commit": self.code_commit}
        t.update({k: str(v) for k, v in self.extra_tags.items()})
        return t


@dataclass
class Registered:
    """Result of `register_version`: `created` is False when an existing version was reused."""

    name: str
    version: int
    run_id: str | None
    created: bool

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _client(tracking_uri: str | None = None) -> MlflowClient:
    uri = check_mlflow(tracking_uri)  # fail in seconds, not after MLflow's long retries
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def version_url(name: str, version: int | str, tracking_uri: str | None = None) -> str:
    """Browser URL of a model version page in the MLflow UI."""
    base = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")).rstrip("/")
    return f"{base}/#/models/{name}/versions/{version}"


def find_version(name: str, fingerprint: str, client: MlflowClient | None = None
                 ) -> ModelVersion | None:
    """The oldest version of `name` tagged with `fingerprint`, or None."""
    c = client or _client()
    found = c.search_model_versions(f"name = '{name}' and tags.`{TAG}fingerprint` = '{fingerprint}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def metrics_markdown(metrics: dict[str, float], teacher: dict[str, float] | None = None) -> str:
    """A markdown table of evaluation metrics (with the teacher's column when given)."""
    rows = ["| metric | model | teacher |", "| --- | --- | --- |"] if teacher else \
        ["| metric | value |", "| --- | --- |"]
    for k, v in sorted(metrics.items()):
        cells = [k, f"{v:.4g}"] + ([f"{teacher[k]:.4g}" if k in teacher else "-"] if teacher else [])
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def register_version(name: str, artifact_dir: str | os.PathLike, info: VersionInfo, *,
                     metrics: dict[str, float] | None = None,
                     teacher_metrics: dict[str, float] | None = None,
                     params: dict[str, object] | None = None, run_id: str | None = None,
                     experiment: str | None = None, description: str = "",
                     alias: str | None = CANDIDATE,
                     tracking_uri: str | None = None,
                     log_model: Callable[[str, Path], tuple[str, str | None]] | None = None
                     ) -> Registered:
    """Register `artifact_dir` as a new version of `name`, unless one with the same fingerprint
    exists (then return that one, `created=False`, touching nothing).

    The files are logged as artifacts `model/` of the MLflow run `run_id` (a new run in
    experiment `experiment` or `name` when None) together with `params` and `metrics`; the
    version gets `info.tags()`, `metric.<k>` tags, an evaluation table in its description and
    the alias `alias` (default `candidate`).

    `log_model(run_id, artifact_dir) -> (source uri, model id or None)` replaces the plain
    artifact copy, e.g. to log an MLflow pyfunc model (`tasks.pyfunc_logging`); the version then
    points at that logged model.
    """
    c = _client(tracking_uri)
    src = Path(artifact_dir)
    if not src.is_dir() or not any(src.iterdir()):
        raise ValueError(f"register_version: {src} is not a non-empty directory")
    existing = find_version(name, info.fingerprint, c)
    if existing is not None:
        log.info("%s already has version %s with fingerprint %s; not registering again",
                 name, existing.version, info.fingerprint)
        return Registered(name, int(existing.version), existing.run_id, created=False)

    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description=f"LoLCATs-linearized `{name.removeprefix('lolcats-')}`.")
        except MlflowException:
            pass  # created concurrently

    if run_id is None:
        exp = c.get_experiment_by_name(experiment or name)
        exp_id = exp.experiment_id if exp else c.create_experiment(experiment or name)
        run_id = c.create_run(exp_id, run_name=f"register-{info.fingerprint[:12]}",
                              tags=info.tags()).info.run_id
        own_run = True
    else:
        own_run = False
    for k, v in (params or {}).items():
        c.log_param(run_id, k, v)
    for k, v in (metrics or {}).items():
        if v is not None and math.isfinite(float(v)):
            c.log_metric(run_id, k, float(v))
    model_id = None
    if log_model is not None:
        source, model_id = log_model(run_id, src)
    else:
        c.log_artifacts(run_id, str(src), "model")
        source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
    if own_run:
        c.set_terminated(run_id)

    tags = info.tags() | _metric_tags(metrics, teacher_metrics) | {EVAL_RUN: run_id}
    desc = description
    if metrics:
        desc = (desc + "\n\n" if desc else "") + EVAL_HEADING + \
            metrics_markdown(metrics, teacher_metrics)
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags, description=desc,
                                model_id=model_id)

    # Two racing registrations of the same inputs: keep the oldest, drop ours.
    first = find_version(name, info.fingerprint, c)
    if first is not None and int(first.version) < int(mv.version):
        log.warning("%s: version %s duplicates %s (same fingerprint); deleting it",
                    name, mv.version, first.version)
        c.delete_model_version(name, mv.version)
        return Registered(name, int(first.version), first.run_id, created=False)
    if alias:
        c.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s version %s (%s)", name, mv.version, version_url(name, mv.version))
    return Registered(name, int(mv.version), run_id, created=True)


EVAL_HEADING = "### Evaluation\n\n"
EVAL_RUN = f"{TAG}evaluation_run_id"


def _metric_tags(metrics: dict | None, teacher: dict | None) -> dict[str, str]:
    return {f"{prefix}{k}": f"{float(v):.6g}" for prefix, ms in (("metric.", metrics), ("teacher.", teacher))
            for k, v in (ms or {}).items() if v is not None and math.isfinite(float(v))}


def recorded_metrics(mv: ModelVersion) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, teacher metrics) a version's tags record (its latest evaluation)."""
    out: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for k, v in (mv.tags or {}).items():
        for i, prefix in enumerate(("metric.", "teacher.")):
            if k.startswith(prefix):
                try:
                    out[i][k[len(prefix):]] = float(v)
                except ValueError:
                    pass
    return out


def record_evaluation(name: str, version: int | str, metrics: dict[str, float],
                      teacher_metrics: dict[str, float] | None, run_id: str | None, *,
                      tracking_uri: str | None = None) -> bool:
    """Make a version's tags and description hold this evaluation (e.g. after the `eval:`
    settings changed): `metric.*` / `teacher.*` tags replaced (stale ones deleted), the
    evaluating run in `lolcats.evaluation_run_id`. Returns whether anything changed."""
    c = _client(tracking_uri)
    mv = c.get_model_version(name, str(version))
    want = _metric_tags(metrics, teacher_metrics)
    have = {k: v for k, v in (mv.tags or {}).items() if k.startswith(("metric.", "teacher."))}
    if want == have:
        return False
    for k in set(have) - set(want):
        c.delete_model_version_tag(name, str(version), k)
    for k, v in want.items():
        if have.get(k) != v:
            c.set_model_version_tag(name, str(version), k, v)
    if run_id:
        c.set_model_version_tag(name, str(version), EVAL_RUN, run_id)
    head = (mv.description or "").split(EVAL_HEADING)[0].rstrip()
    note = f"\n\nRe-evaluated by MLflow run `{run_id}`." if run_id else ""
    c.update_model_version(name, str(version), description=(head + "\n\n" if head else "") + EVAL_HEADING
                           + metrics_markdown(metrics, teacher_metrics) + note)
    log.info("%s version %s: evaluation updated (%d metric tags changed)", name, version,
             len(set(want.items()) ^ set(have.items())))
    return True


@dataclass
class Verdict:
    """Outcome of `judge`: whether the version is champion now, and why."""

    champion: bool
    promoted: bool
    demoted: bool
    gate: str
    reason: str

    def summary(self) -> str:
        return f"{self.gate}; {self.reason}"


def judge(name: str, version: int | str, gate: dict | None, *, alias: str = CHAMPION,
          tracking_uri: str | None = None) -> Verdict:
    """Run the gate (`lolcats_core.gate`, a config's `gate:` section) on the version's recorded
    metrics and decide the `champion` alias:

    - the champion (this version or another) fails this gate: the alias goes to the best
      version passing it, or nowhere (`_hand_back`);
    - the version fails the gate: not champion;
    - the version passes and there is no champion, or it is not worse than the champion on
      the gate's metrics (within `champion_tolerance`): it becomes champion;
    - else the champion stays. Verdicts are tags `gate.passed`, `gate.summary`, `champion.check`.
    """
    from lolcats_core.gate import champion_tolerance, gate_rules, not_worse, quality_gate

    c = _client(tracking_uri)
    version = str(version)
    rules, tol = gate_rules(gate), champion_tolerance(gate)
    metrics, teacher = recorded_metrics(c.get_model_version(name, version))
    result = quality_gate(metrics, teacher, rules)
    _tag_gate(c, name, version, result)
    champ = version_by_alias(name, alias, tracking_uri)
    if champ is not None:
        c_metrics, c_teacher = recorded_metrics(champ)
        if not quality_gate(c_metrics, c_teacher or teacher, rules).passed:
            new = _hand_back(c, name, champ.version, gate, teacher, alias)
            return _handed_back(version, champ.version, new, result.summary(), alias)
    if not result.passed:
        return Verdict(False, False, False, result.summary(), "not promoted")
    if champ is not None and champ.version == version:
        return Verdict(True, False, False, result.summary(), f"stays @{alias}")
    if champ is not None:
        cmp = not_worse(metrics, recorded_metrics(champ)[0], rules, tol)
        check = f"vs version {champ.version}: " + cmp.summary()
        c.set_model_version_tag(name, version, "champion.check", check[:5000])
        if not cmp.passed:
            log.info("%s version %s passes the gate but is worse than @%s (version %s): %s",
                     name, version, alias, champ.version, cmp.summary())
            return Verdict(False, False, False, result.summary(),
                           f"not promoted: worse than @{alias} version {champ.version} ({cmp.summary()})")
    c.set_registered_model_alias(name, alias, version)
    log.info("%s version %s promoted to @%s", name, version, alias)
    return Verdict(True, True, False, result.summary(), f"promoted to @{alias}")


def _tag_gate(c: MlflowClient, name: str, version: str, result: GateResult) -> None:
    """Record a gate verdict on a version: tags `gate.passed`, `gate.summary`."""
    c.set_model_version_tag(name, version, "gate.passed", str(result.passed).lower())
    c.set_model_version_tag(name, version, "gate.summary", result.summary()[:5000])


def _hand_back(c: MlflowClient, name: str, demoted: str, gate: dict | None,
               teacher: dict[str, float], alias: str) -> str | None:
    """The champion `demoted` fails `gate`: move `alias` to the best version of `name` that
    passes it by its recorded metrics (`lolcats_core.gate.choose_champion`; a version without
    teacher metrics is gated against `teacher`), or remove it when none passes. Returns the new
    champion. Every version gets this gate's `gate.*` tags, the passing ones a `champion.check`
    on why they are or are not chosen, the old and new champion a `champion.reason`."""
    from lolcats_core.gate import choose_champion

    recorded = {int(mv.version): recorded_metrics(mv) for mv in c.search_model_versions(f"name = '{name}'")}
    choice = choose_champion({v: (m, t or teacher) for v, (m, t) in recorded.items()}, gate)
    for v, g in choice.gates.items():
        _tag_gate(c, name, str(v), g)
    for v, why in choice.reasons.items():
        c.set_model_version_tag(name, str(v), "champion.check", why[:5000])
    new = None if choice.version is None else str(choice.version)
    if new is None:
        c.delete_registered_model_alias(name, alias)
    else:
        why = f"took @{alias} from version {demoted}, which fails the gate: {choice.reasons[choice.version]}"
        c.set_model_version_tag(name, new, "champion.reason", why[:5000])
        c.set_registered_model_alias(name, alias, new)
    c.set_model_version_tag(name, demoted, "champion.reason", f"lost @{alias}: fails the gate; " + _handed(new))
    log.warning("%s version %s fails the gate and is no longer @%s; %s: %s", name, demoted, alias,
                _handed(new), choice.gates[int(demoted)].summary())
    return new


def _handed(new: str | None) -> str:
    """Where the alias of a failing champion went."""
    return f"handed to version {new}" if new else "no version passes it: no champion"


def _handed_back(version: str, demoted: str, new: str | None, gate: str, alias: str) -> Verdict:
    """`judge`'s verdict on `version` after the champion `demoted` handed the alias to `new`."""
    if version == demoted:
        return Verdict(False, False, True, gate, f"demoted from @{alias}; {_handed(new)}")
    if version == new:
        return Verdict(True, True, False, gate, f"promoted to @{alias} (version {demoted} failed this gate and lost it)")
    return Verdict(False, False, False, gate,
                   f"not promoted (version {demoted} failed this gate and lost @{alias}; {_handed(new)})")


def promote(name: str, version: int | str, result: GateResult, *,
            alias: str = CHAMPION, tracking_uri: str | None = None) -> bool:
    """Point `alias` (default `champion`) at `version` if the gate (`lolcats_core.gate`) passed;
    record the outcome as tags `gate.passed` / `gate.summary` either way. Returns whether it
    promoted."""
    c = _client(tracking_uri)
    c.set_model_version_tag(name, str(version), "gate.passed", str(result.passed).lower())
    if result.checks:
        c.set_model_version_tag(name, str(version), "gate.summary", result.summary()[:5000])
    if result.passed:
        c.set_registered_model_alias(name, alias, str(version))
        log.info("%s version %s promoted to @%s", name, version, alias)
    else:
        log.info("%s version %s not promoted: %s", name, version, result.summary())
    return result.passed


def version_by_alias(name: str, alias: str, tracking_uri: str | None = None) -> ModelVersion | None:
    """The version `alias` points at, or None if the alias (or the model) does not exist."""
    c = _client(tracking_uri)
    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
