"""`python -m tuning.report <experiment dir> [--out DIR]`: a sweep's report, for people.

Writes `report.html` (self-contained: plots embedded, no scripts, no network), `report.md` and
the plots as PNGs beside them (default: `<experiment dir>/report/`). It reads what the sweep
left: `sweep.yaml`, the ledger `trials.json`, ASHA's rungs (`asha_rungs.json`, else the rungs
the sweep's ASHA settings give) and each trial's run folder (`runs/trial-<id>/` in the
experiment folder, else the folder the ledger names: its `config.yaml`, and its `metrics.jsonl`
read once per step: a step a resumed run re-ran counts once, its last record).

The experiment folder and `--out` may be URIs (`s3://bucket/prefix/<name>`, any filesystem
pyarrow knows): only those files (and each trial's `summary.json`) are fetched, never
checkpoints or models, and the report is rendered in a local scratch folder and uploaded (by
default to `<experiment>/report/` at the URI). A sweep run elsewhere (in a cluster job's
working folder) may name a base config that is not here: the report does not need it, each
trial's own `config.yaml` says what it ran.

Trials are compared at one step they all reached, not at their last validation: under ASHA
most trials stop early (at a rung), and a trial that ran 12 steps would beat one stopped at
step 4 for having run longer. The comparison step S is chosen so:

- the trials that set it are those that finished or were stopped by ASHA (failed trials, trials
  stopped for a NaN and trials still running do not: one broken early would pull everyone back;
  if no trial ended either way, every trial that is not failed and logged a step sets it);
- R = the smallest last logged step among them ("the latest step every trial reached");
- S = the largest step <= R that is an ASHA rung or a validation step (> 0) every one of them
  logged; R itself if there is none;
- each trial's number is its greedy validation accuracy (`val/greedy_accuracy`) at S or, if
  validation did not run at S, the latest validation before S (after step 0): exactly what the
  run reports at S as `objective/val_accuracy`, the objective the search optimises. Only if some
  trial has no validation after step 0 by step S is `objective/running_accuracy` at S (the
  on-policy running accuracy ASHA ranks by) used instead; the page says which.

A trial is ranked if it is not failed, reached S and has that number. Ranking, the best
configuration, parameter importance and the accuracy-against-parameter plot use it; the final and
best validation accuracies stay in the table. Trials that stopped before the end are marked in
the table and in every plot (hollow markers; x for failed).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mentor_ray import storage
from mentor_ray.config import ConfigError, MentorConfig, load_config
from mentor_ray.metrics import (
    OBJECTIVE_WINDOW,
    end_of_guidance_step,
    read_metrics,
    window_mean,
)
from tuning.space import GUIDANCE_RATIO, SweepSpec, sweep_from_dict
from tuning.sweep import (
    ASHA_STATE_FILE,
    LEDGER_FILE,
    RUNS_FOLDER,
    SPEC_FILE,
    SweepLedger,
    TrialRecord,
    trial_run_name,
)

VAL = "val/greedy_accuracy"
ENTROPY = "rollout/entropy_mean"
RUNNING = "objective/running_accuracy"
FINISHED = "finished"
ASHA_STOPPED = "stopped by ASHA"
FAILED = "failed"
# Trials whose ending sets the comparison step (see the module's docstring).
SETS_THE_STEP = (FINISHED, ASHA_STOPPED)

# How each status is drawn: filled only for a trial that ran to the end. `color`: the marker's
# in the accuracy-against-parameter plot; `end`: the marker a trial's curve ends in.
STATUS_STYLE: dict[str, dict[str, Any]] = {
    FINISHED: {"color": "tab:blue", "filled": True, "end": "o", "mark": "●"},
    ASHA_STOPPED: {"color": "tab:orange", "filled": False, "end": "o", "mark": "○"},
    "stopped (NaN)": {"color": "tab:red", "filled": False, "end": "D", "mark": "○"},
    FAILED: {"color": "tab:red", "filled": False, "end": "X", "mark": "×"},
    "running": {"color": "tab:gray", "filled": False, "end": ">", "mark": "○"},
}


def status_style(status: str) -> dict[str, Any]:
    return STATUS_STYLE.get(status, {"color": "tab:gray", "filled": False, "end": "s", "mark": "○"})


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class TrialRow:
    record: TrialRecord
    config: MentorConfig | None
    history: list[dict[str, float]]

    @property
    def trial_id(self) -> str:
        return self.record.trial_id

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def algorithm(self) -> str:
        """The trial's method as tables name it (MENTOR without mixed samples is GRPO)."""
        from mentor_ray.core.methods import algorithm_name

        return algorithm_name(self.config) if self.config is not None else "MENTOR"

    @property
    def is_grpo(self) -> bool:
        return self.algorithm == "GRPO"

    @property
    def label(self) -> str:
        return self.trial_id if self.algorithm == "MENTOR" else f"{self.trial_id} ({self.algorithm})"

    @property
    def last_step(self) -> int:
        """The last step the run logged (0 if none)."""
        return max((int(r["step"]) for r in self.history), default=0)

    def validations(self) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[VAL])) for r in self.history if not _nan(r.get(VAL))]

    def final_val(self) -> float:
        values = self.validations()
        return values[-1][1] if values else math.nan

    def best_val(self) -> float:
        values = self.validations()
        return max(v for _, v in values) if values else math.nan

    def value_at(self, step: int, quantity: str = VAL) -> tuple[float, int | None]:
        """`quantity` at `step` and the step it was measured at: for validation the latest one
        at or before `step` (after step 0, the initial policy's), what the run reports at `step`
        as objective/val_accuracy; for anything else the record of `step` itself. NaN if the
        run did not get to `step`."""
        if self.last_step < step:
            return math.nan, None
        if quantity == VAL:
            points = [(s, v) for s, v in self.validations() if 0 < s <= step]
            return (points[-1][1], points[-1][0]) if points else (math.nan, None)
        record = next((r for r in self.history if int(r["step"]) == step), None)
        value = None if record is None else record.get(quantity)
        return (math.nan, None) if _nan(value) else (float(value), step)

    def entropy_end_of_guidance(self) -> float:
        if not self.history or self.config is None:
            return math.nan
        return window_mean(self.history, ENTROPY, end_of_guidance_step(self.history, self.config.guidance.decay_steps))

    def searched_values(self, spec: SweepSpec) -> dict[str, Any]:
        """The searched parameters in the run config's own units (what the run used)."""
        if self.config is None:
            return dict(self.record.params)
        values: dict[str, Any] = {}
        for parameter in spec.parameters:
            if parameter.key == GUIDANCE_RATIO:
                values[GUIDANCE_RATIO] = round(self.config.rollout.guidance_ratio, 4)
                continue
            node: Any = self.config
            for part in parameter.key.split("."):
                node = getattr(node, part)
            values[parameter.key] = node
        return values


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# What the report reads: of the experiment folder, and of each trial's run folder.
SWEEP_FILES = (SPEC_FILE, LEDGER_FILE, ASHA_STATE_FILE)
TRIAL_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


def trial_run_dir(experiment_dir: str | Path, record: TrialRecord) -> str:
    """A trial's run folder: `runs/trial-<id>` in the experiment folder if it is there (also
    after the folder was moved, copied or uploaded), else the folder the ledger names."""
    inside = storage.join(os.fspath(experiment_dir), RUNS_FOLDER, trial_run_name(record.trial_id))
    return inside if storage.is_dir(inside) else record.run_dir


def load_spec(path: Path) -> SweepSpec:
    """The saved sweep file; a base config that is not here (the sweep ran on another machine,
    or in a cluster job's working folder) is left out: the report reads each trial's own config."""
    data = yaml.safe_load(path.read_text()) or {}
    if data.get("base_config") and not Path(data["base_config"]).is_file():
        data["base_config"] = None
    return sweep_from_dict(data, f"sweep file {path}", base_dir=path.parent)


def load_rows(experiment_dir: Path) -> tuple[SweepSpec, list[TrialRow]]:
    experiment_dir = Path(experiment_dir)
    if not (experiment_dir / SPEC_FILE).is_file() or not (experiment_dir / LEDGER_FILE).is_file():
        raise ConfigError(f"{experiment_dir}: not a sweep folder (needs {SPEC_FILE} and {LEDGER_FILE}; run python -m tuning.sweep first)")
    spec = load_spec(experiment_dir / SPEC_FILE)
    ledger = SweepLedger(experiment_dir, total_steps=0)
    rows = []
    for record in sorted(ledger.records.values(), key=lambda r: r.trial_id):
        run_dir = Path(trial_run_dir(experiment_dir, record))
        config = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
        history = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
        rows.append(TrialRow(record, config, history))
    return spec, rows


# ---------------------------------------------------------------------------------------------
# The step every trial is compared at.


def asha_rungs(experiment_dir: Path, spec: SweepSpec, rows: list[TrialRow]) -> list[int]:
    """The steps at which ASHA compared trials: the milestones the sweep's scheduler saved in
    `asha_rungs.json`, else those of the scheduler the sweep builds from its ASHA settings and
    the trials' total_steps. A milestone between steps is met at the next step; one past the
    trials' total_steps (the sweep sets ASHA's max_t one past it) is never met and is left out."""
    milestones: list[float] = []
    totals = [r.config.total_steps for r in rows if r.config is not None]
    path = Path(experiment_dir) / ASHA_STATE_FILE
    if path.is_file():
        try:
            milestones = [float(m) for bracket in json.loads(path.read_text())["rungs"] for m, _ in bracket]
        except (ValueError, KeyError, TypeError):
            milestones = []
    if not milestones and spec.asha is not None and totals:
        from tuning.sweep import _scheduler

        try:
            scheduler = _scheduler(spec, max(totals), Path(experiment_dir))
        except (AssertionError, ValueError, ZeroDivisionError):
            scheduler = None
        milestones = [float(m) for b in getattr(scheduler, "_brackets", []) for m, _ in b._rungs]
    return sorted({math.ceil(m) for m in milestones if m > 0 and (not totals or math.ceil(m) <= max(totals))})


@dataclass
class Comparison:
    step: int | None  # the common step S (None: no trial logged a step)
    why: str  # why S, in words
    quantity: str  # VAL or RUNNING
    rungs: list[int]
    reached: tuple[int, int]  # smallest and largest last step of the trials that set S
    setters: list[str]  # trial ids of the trials that set S
    values: dict[str, float] = field(default_factory=dict)  # ranked trials only
    measured_at: dict[str, int] = field(default_factory=dict)  # the step each value was measured at
    ranking: list[TrialRow] = field(default_factory=list)  # best first
    unranked: dict[str, str] = field(default_factory=dict)  # trial id -> why not ranked

    @property
    def best(self) -> TrialRow | None:
        return self.ranking[0] if self.ranking else None

    def rank(self, row: TrialRow) -> int | None:
        ids = [r.trial_id for r in self.ranking]
        return ids.index(row.trial_id) + 1 if row.trial_id in ids else None

    def value(self, row: TrialRow) -> float:
        return self.values.get(row.trial_id, math.nan)

    @property
    def name(self) -> str:
        return "val acc" if self.quantity == VAL else "running acc"


def compare_trials(rows: list[TrialRow], rungs: list[int]) -> Comparison:
    """Chooses the common step S and ranks the trials there (the rule is the module's docstring)."""
    logged = [r for r in rows if r.status != FAILED and r.last_step > 0]
    setters = [r for r in logged if r.status in SETS_THE_STEP] or logged
    if not setters:
        return Comparison(None, "no trial logged a step", VAL, rungs, (0, 0), [],
                          unranked={r.trial_id: "failed" if r.status == FAILED else "no step logged" for r in rows})
    lasts = [r.last_step for r in setters]
    reached = min(lasts)
    common_validations = set.intersection(*({s for s, _ in r.validations() if 0 < s <= reached} for r in setters))
    rung_steps = [s for s in rungs if s <= reached]
    step = max([*rung_steps, *common_validations], default=reached)
    if step in rung_steps:
        kind = "an ASHA rung" + (", where validation ran" if step in common_validations else "")
    elif step in common_validations:
        kind = "a validation step"
    else:
        kind = "the last step the shortest trial logged"
    why = f"the latest step every trial reached ({kind}"
    why += f"; ASHA's rungs are at steps {', '.join(map(str, rungs))})" if rungs else "; no ASHA rungs)"
    quantity = VAL
    if any(_nan(r.value_at(step, VAL)[0]) for r in setters) and all(not _nan(r.value_at(step, RUNNING)[0]) for r in setters):
        quantity = RUNNING
    comparison = Comparison(step, why, quantity, rungs, (reached, max(lasts)), [r.trial_id for r in setters])
    for row in rows:
        value, measured = row.value_at(step, quantity)
        if row.status == FAILED:
            comparison.unranked[row.trial_id] = "failed"
        elif row.last_step < step:
            comparison.unranked[row.trial_id] = f"{row.status} at step {row.last_step}, before step {step}"
        elif _nan(value):
            comparison.unranked[row.trial_id] = f"no {'validation' if quantity == VAL else quantity} by step {step}"
        else:
            comparison.values[row.trial_id] = value
            comparison.measured_at[row.trial_id] = measured
    ranked = [r for r in rows if r.trial_id in comparison.values]
    comparison.ranking = sorted(ranked, key=lambda r: (-comparison.values[r.trial_id], r.trial_id))
    return comparison


def leaders_by_step(rows: list[TrialRow], steps: list[int], quantity: str = VAL) -> list[tuple[int, int, TrialRow | None, float]]:
    """At each step: how many (not failed) trials reached it, and which led there."""
    out = []
    for step in steps:
        scored = [(row.value_at(step, quantity)[0], row) for row in rows if row.status != FAILED]
        scored = [(v, row) for v, row in scored if not _nan(v)]
        scored.sort(key=lambda item: (-item[0], item[1].trial_id))
        value, leader = scored[0] if scored else (math.nan, None)
        out.append((step, len(scored), leader, value))
    return out


def best_config_yaml(spec: SweepSpec, row: TrialRow) -> str:
    """The best trial's searched settings as a block for a training config."""
    tree: dict[str, Any] = {}
    for key, value in row.searched_values(spec).items():
        if key == GUIDANCE_RATIO and row.config is not None:
            tree.setdefault("rollout", {}).update(n_on_policy=row.config.rollout.n_on_policy, n_mixed=row.config.rollout.n_mixed)
            continue
        section, _, name = key.rpartition(".")
        node = tree
        for part in section.split(".") if section else []:
            node = node.setdefault(part, {})
        node[name] = round(value, 4) if isinstance(value, float) else value
    return yaml.safe_dump(tree, sort_keys=False).rstrip()


# ---------------------------------------------------------------------------------------------
# Plots: each built as a matplotlib Figure (what it drew can be inspected), then saved.


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _status_handles(statuses: list[str], curves: bool, grpo: bool = False) -> list:
    """Legend entries for the statuses drawn: for the curves, each status's end marker (black);
    for the scatter, its colour and fill."""
    from matplotlib.lines import Line2D

    handles = []
    for status in [s for s in STATUS_STYLE if s in statuses] + sorted(set(statuses) - set(STATUS_STYLE)):
        style = status_style(status)
        color = "black" if curves else style["color"]
        fill = "filled" if style["filled"] else "hollow"
        handles.append(Line2D([], [], linestyle="", marker=style["end"] if curves else "o", markersize=7, color=color,
                              markerfacecolor=color if style["filled"] else "none", label=f"{status} ({fill})"))
    if grpo:
        handles.append(Line2D([], [], linestyle="", marker="s", markersize=7, color="black", markerfacecolor="none", label="square: GRPO"))
    return handles


def curves_figure(rows: list[TrialRow], key: str, title: str, ylabel: str, comparison: Comparison | None = None):
    """`key` against step, one line per trial; each line ends in its status's marker (filled: ran
    to the end, hollow: stopped early, x: failed); a dotted line at the comparison step."""
    figure = _figure(figsize=(7.5, 4.6))
    axes = figure.subplots()
    drawn: list[TrialRow] = []
    for row in rows:
        points = [(r["step"], r[key]) for r in row.history if not _nan(r.get(key))]
        if not points:
            continue
        steps, values = zip(*points)
        line_style = {"color": "black", "linestyle": "--", "linewidth": 2.2} if row.is_grpo else {"linewidth": 1.2, "alpha": 0.85}
        (line,) = axes.plot(steps, values, marker="o", markersize=3, label=f"{row.label}: {row.status} @ {row.last_step}", **line_style)
        style = status_style(row.status)
        axes.plot([steps[-1]], [values[-1]], linestyle="", marker=style["end"], markersize=9, markeredgewidth=1.8,
                  color=line.get_color(), markerfacecolor=line.get_color() if style["filled"] else "none", gid=f"end:{row.trial_id}")
        drawn.append(row)
    if comparison is not None and comparison.step is not None and drawn:
        axes.axvline(comparison.step, color="gray", linestyle=":", linewidth=1.5, label=f"compared at step {comparison.step}", gid="comparison-step")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    if drawn:
        handles, _ = axes.get_legend_handles_labels()
        handles += _status_handles(sorted({r.status for r in drawn}), curves=True)
        axes.legend(handles=handles, fontsize=6.5, ncol=2)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return figure


def accuracy_vs_parameters_figure(spec: SweepSpec, rows: list[TrialRow], comparison: Comparison):
    """Each ranked trial's number at the comparison step against each searched parameter:
    filled for a trial that ran to the end, hollow for one stopped early, squares for GRPO.
    One scatter per (status, GRPO or not), its gid `<status>|grpo` or `<status>|mentor`."""
    keys = [p.key for p in spec.parameters]
    columns = min(3, len(keys))
    lines = math.ceil(len(keys) / columns)
    figure = _figure(figsize=(4 * columns, 3.2 * lines + 0.6))
    axes_grid = figure.subplots(lines, columns, squeeze=False)
    groups: dict[tuple[str, bool], list[TrialRow]] = {}
    for row in comparison.ranking:
        groups.setdefault((row.status, row.is_grpo), []).append(row)
    for index, key in enumerate(keys):
        axes = axes_grid[index // columns][index % columns]
        for (status, grpo), members in groups.items():
            style = status_style(status)
            axes.scatter([row.searched_values(spec)[key] for row in members], [comparison.value(row) for row in members],
                         marker="s" if grpo else "o", s=36, linewidths=1.5, edgecolors=style["color"],
                         facecolors=style["color"] if style["filled"] else "none",
                         label=f"{status}" + (" (GRPO)" if grpo else ""), gid=f"{status}|{'grpo' if grpo else 'mentor'}")
        axes.set_xlabel(key)
        axes.set_ylabel(f"{comparison.name} at step {comparison.step}")
    for index in range(len(keys), lines * columns):
        axes_grid[index // columns][index % columns].axis("off")
    if not groups:
        axes_grid[0][0].text(0.5, 0.5, "no ranked trial", ha="center", va="center", transform=axes_grid[0][0].transAxes)
    if groups:
        axes_grid[0][0].legend(handles=_status_handles(sorted({s for s, _ in groups}), curves=False, grpo=any(g for _, g in groups)), fontsize=7)
    figure.suptitle(f"{comparison.name.capitalize()} at step {comparison.step} (the latest step every trial reached) "
                    "against each searched parameter\nfilled: ran to the end; hollow: stopped early; squares: GRPO", fontsize=10)
    return figure


def parameter_importance(spec: SweepSpec, comparison: Comparison) -> dict[str, float]:
    """Optuna's fANOVA-free importance (PED-ANOVA) of each parameter for the number at the
    comparison step, over the ranked trials. Empty if fewer than 3 are ranked, or none differ."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scored = comparison.ranking
    if len(scored) < 3 or len({comparison.value(r) for r in scored}) < 2:
        return {}
    distributions: dict[str, Any] = {}
    for p in spec.parameters:
        if p.kind == "choice":
            distributions[p.key] = optuna.distributions.CategoricalDistribution(list(p.values))
        elif p.kind == "int":
            distributions[p.key] = optuna.distributions.IntDistribution(int(p.values[0]), int(p.values[1]))
        else:
            distributions[p.key] = optuna.distributions.FloatDistribution(*p.values, log=p.kind == "loguniform")
    study = optuna.create_study(direction="maximize")
    for row in scored:
        params = {k: v for k, v in row.record.params.items() if k in distributions}
        if len(params) != len(distributions):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=comparison.value(row)))
    if len(study.trials) < 3:
        return {}
    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError):
        return {}


def importance_figure(importance: dict[str, float], comparison: Comparison):
    figure = _figure(figsize=(7, 1.0 + 0.5 * max(len(importance), 1)))
    axes = figure.subplots()
    stopped = sum(1 for r in comparison.ranking if r.status != FINISHED)
    if importance:
        names = list(importance)[::-1]
        axes.barh(names, [importance[n] for n in names], color="tab:green")
        axes.set_xlabel(f"importance for {comparison.name} at step {comparison.step} (Optuna PED-ANOVA)")
        axes.set_title(f"over {len(comparison.ranking)} trials at step {comparison.step}, "
                       f"{stopped} of them stopped early (ASHA or other)", fontsize=9)
    else:
        axes.text(0.5, 0.5, "too few ranked trials for importances", ha="center", va="center", transform=axes.transAxes)
        axes.axis("off")
    return figure


# ---------------------------------------------------------------------------------------------
# The page and the summary.


def _status_cell(row: TrialRow) -> str:
    return f"{status_style(row.status)['mark']} {row.status}"


def _steps_cell(row: TrialRow) -> str:
    """The steps the ledger counted; a run stopped by ASHA may have logged a step more before
    the stop reached it, which the report uses and says."""
    steps = row.record.steps
    if row.last_step and row.last_step != steps:
        return f"{steps} (logged to {row.last_step})"
    return str(steps)


def _table(spec: SweepSpec, rows: list[TrialRow], comparison: Comparison) -> tuple[list[str], list[list[str]], list[TrialRow]]:
    """Trials in ranking order, then the unranked by id."""
    keys = [p.key for p in spec.parameters]
    at = f"@ step {comparison.step}" if comparison.step is not None else "@ common step"
    header = ["rank", "trial", *keys, f"val acc {at}", f"running acc {at}", "final val acc", "best val acc",
              "entropy at end of guidance", "steps", "status", "error"]
    ordered = comparison.ranking + [r for r in rows if comparison.rank(r) is None]
    body = []
    for row in ordered:
        values = row.searched_values(spec)
        rank = comparison.rank(row)
        val, measured = row.value_at(comparison.step, VAL) if comparison.step is not None else (math.nan, None)
        val_cell = _fmt(val) + (f" (step {measured})" if measured is not None and measured != comparison.step else "")
        running = row.value_at(comparison.step, RUNNING)[0] if comparison.step is not None else math.nan
        body.append([
            str(rank) if rank is not None else "-", row.label, *[_fmt(values.get(k, "-")) for k in keys], val_cell, _fmt(running),
            _fmt(row.final_val()), _fmt(row.best_val()), _fmt(row.entropy_end_of_guidance()), _steps_cell(row),
            _status_cell(row), row.record.error or "",
        ])
    return header, body, ordered


def _comparison_lines(rows: list[TrialRow], comparison: Comparison) -> list[str]:
    if comparison.step is None:
        return ["No trial logged a step: nothing to compare."]
    step = comparison.step
    low, high = comparison.reached
    lines = [
        f"Trials are compared at step {step}, {comparison.why}. The trials ran to steps {low}"
        + (f" to {high}" if high != low else "") + ", so a trial's last validation also measures how long it ran: "
        f"ranking, the best configuration, parameter importance and the accuracy-against-parameter plot use step {step}; "
        "final and best validation accuracies stay in the table but rank nothing."
    ]
    if comparison.quantity == VAL:
        measured = sorted(set(comparison.measured_at.values()))
        if measured == [step]:
            lines.append(f"The number compared is the greedy validation accuracy ({VAL}) logged at step {step}, "
                         "the same as objective/val_accuracy there (the objective the search optimises).")
        else:
            lines.append(f"Validation did not run at step {step} in every trial, so the number compared is the latest greedy "
                         f"validation accuracy ({VAL}) at or before step {step} (measured at step "
                         f"{', '.join(map(str, measured))}): what the run reports at step {step} as objective/val_accuracy, "
                         "the objective the search optimises.")
    else:
        lines.append(f"Some trials have no validation after step 0 by step {step}, so the number compared is {RUNNING} at step "
                     f"{step}: the mean on-policy sampled accuracy of the last {OBJECTIVE_WINDOW} steps, the number ASHA ranks "
                     "by (not a validation accuracy).")
    others = [r for r in rows if r.trial_id not in comparison.setters]
    if others:
        lines.append("The step is set by the trials that finished or were stopped by ASHA; failed trials are not ranked, "
                     "and the others only if they reached it.")
    return lines


def _findings(spec: SweepSpec, rows: list[TrialRow], comparison: Comparison) -> list[str]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    lines = [f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]
    lines += _comparison_lines(rows, comparison)
    best = comparison.best
    step = comparison.step
    if best is not None:
        text = f"Best at step {step}: trial {best.label}, {comparison.name} {comparison.value(best):.3f}."
        if len(comparison.ranking) > 1 and comparison.value(comparison.ranking[1]) == comparison.value(best):
            tied = [r.label for r in comparison.ranking if comparison.value(r) == comparison.value(best)]
            text += f" Trials {', '.join(tied)} tie there; the tie is broken by trial id."
        finished = [r for r in rows if r.status == FINISHED]
        if best.status == FINISHED and len(finished) == 1:
            text += (f" It is also the only trial that finished (ran to step {best.last_step}): its final validation accuracy "
                     f"({best.final_val():.3f}) has no other trial to compare with at that step.")
        elif best.status == FINISHED:
            text += f" It ran to the end (step {best.last_step}; final validation accuracy {best.final_val():.3f})."
        else:
            text += f" It was {best.status} at step {best.record.steps or best.last_step}"
            if best.record.steps and best.record.steps != best.last_step:
                text += f" (its run logged up to step {best.last_step} before it ended)"
            text += ": its settings were not trained further, so how they do later is not known."
        by_last = [r for r in rows if r.status != FAILED and not math.isnan(r.final_val()) and r.last_step > 0]
        if by_last:
            leader = max(by_last, key=lambda r: (r.final_val(), r.best_val()))
            if leader.trial_id != best.trial_id:
                text += (f" Ranked by each trial's last validation instead, trial {leader.label} would lead "
                         f"({leader.final_val():.3f} at step {leader.validations()[-1][0]}, {leader.status}; "
                         f"{comparison.value(leader):.3f} at step {step}).")
        lines.append(text)
    later = [s for s in comparison.rungs if step is not None and step < s]
    end = max((r.last_step for r in rows if r.status == FINISHED), default=None)
    steps = sorted(set(later + ([end] if end is not None and step is not None and end > step else [])))
    if steps:
        parts = []
        for at, count, leader, value in leaders_by_step(rows, steps, VAL):
            if leader is not None:
                parts.append(f"step {at}: {count} trial{'s' if count != 1 else ''}, led by {leader.label} ({value:.3f})")
        if parts:
            lines.append("Later steps, among the trials that reached them (not a fair comparison: the others were not run "
                         "that far): " + "; ".join(parts) + ".")
    grpo = [r for r in comparison.ranking if r.is_grpo]
    if grpo:
        lines.append(f"GRPO (guidance ratio 0) at step {step}: " + ", ".join(
            f"{comparison.value(r):.3f} (rank {comparison.rank(r)} of {len(comparison.ranking)})" for r in grpo) + ".")
    unranked = [f"{trial_id} ({why})" for trial_id, why in comparison.unranked.items()]
    if unranked and step is not None:
        lines.append("Not ranked: " + ", ".join(unranked) + ".")
    return lines


def fetch_sweep(location: str, scratch: Path) -> Path:
    """The files the report reads of the sweep folder at `location` (a URI), copied into
    `scratch` in the same layout: the sweep's own files, and of each trial's run folder only
    TRIAL_FILES (never its checkpoints or model)."""
    if not storage.is_file(storage.join(location, SPEC_FILE)) or not storage.is_file(storage.join(location, LEDGER_FILE)):
        raise ConfigError(f"{location}: not a sweep folder (needs {SPEC_FILE} and {LEDGER_FILE}; run python -m tuning.sweep first)")
    scratch.mkdir(parents=True, exist_ok=True)
    for name in SWEEP_FILES:
        source = storage.join(location, name)
        if storage.is_file(source):
            (scratch / name).write_bytes(storage.read_bytes(source))
    for record in SweepLedger(scratch, total_steps=0).records.values():
        run_dir = trial_run_dir(location, record)
        target = scratch / RUNS_FOLDER / trial_run_name(record.trial_id)
        target.mkdir(parents=True, exist_ok=True)
        try:
            present = set(storage.list_files(run_dir))
        except storage.StorageNotFoundError:
            continue  # the trial never made its folder (it failed first)
        for name in TRIAL_FILES:
            if name in present:
                (target / name).write_bytes(storage.read_bytes(storage.join(run_dir, name)))
    return scratch


def write_report(experiment_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """The report of the sweep folder `experiment_dir` in `out_dir` (default:
    `<experiment_dir>/report`); either may be a local path or a URI. Returns the files written:
    local Paths, or URIs (str) where `out_dir` is one."""
    location = os.fspath(experiment_dir)
    out = os.fspath(out_dir) if out_dir else storage.join(location, "report")
    remote_in, remote_out = storage.is_uri(location), storage.is_uri(out)
    if not (remote_in or remote_out):
        return _render(Path(location), Path(out))
    scratch = Path(tempfile.mkdtemp(prefix="mentor-sweep-report-"))
    try:
        local = fetch_sweep(location, scratch / "sweep") if remote_in else Path(location)
        files = _render(local, scratch / "report" if remote_out else Path(out))
        if not remote_out:
            return files
        storage.upload_dir(scratch / "report", out)
        return {key: storage.join(out, path.name) for key, path in files.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _render(experiment_dir: Path, out_dir: Path) -> dict[str, Path]:
    spec, rows = load_rows(experiment_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    comparison = compare_trials(rows, asha_rungs(experiment_dir, spec, rows))
    best = comparison.best
    importance = parameter_importance(spec, comparison)
    at = f"at step {comparison.step}" if comparison.step is not None else ""
    ends = "line ends: filled ran to the end, hollow stopped early (diamond: NaN), X failed"
    plots = {
        "val_accuracy": _save(curves_figure(rows, VAL, f"Validation accuracy (greedy) per trial; dashed black: GRPO; dotted: compared {at}\n{ends}",
                                            "accuracy", comparison), out_dir / "val_accuracy.png"),
        "entropy": _save(curves_figure(rows, ENTROPY, f"Policy entropy (on-policy tokens) per trial; dashed black: GRPO\n{ends}",
                                       "mean entropy (nats)", comparison), out_dir / "entropy.png"),
        "importance": _save(importance_figure(importance, comparison), out_dir / "importance.png"),
        "accuracy_vs_parameters": _save(accuracy_vs_parameters_figure(spec, rows, comparison), out_dir / "accuracy_vs_parameters.png"),
    }
    header, body, ordered = _table(spec, rows, comparison)
    findings = _findings(spec, rows, comparison)
    best_yaml = best_config_yaml(spec, best) if best else "# no trial has a number at the comparison step"
    title = f"Sweep report: {spec.name}"
    best_heading = f"Best configuration (best {comparison.name} at step {comparison.step})" if best else "Best configuration"
    legend = "Status: ● ran to the end, ○ stopped before the end (hollow markers in the plots), × failed. " + (
        f"Rank: at step {comparison.step}." if comparison.step is not None else "No trial is ranked.")

    md = [f"# {title}", "", *findings, "", "## Trials", "", legend, "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
    md += ["", f"## {best_heading}", "", "```yaml", best_yaml, "```", "", "## Plots", ""]
    md += [f"![{name}]({path.name})" for name, path in plots.items()]
    if importance:
        md += ["", f"## Parameter importance (for {comparison.name} at step {comparison.step})", "",
               *[f"- {k}: {v:.3f}" for k, v in importance.items()]]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    def image(path: Path, alt: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'

    table = "<table id='trials'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
    for line, row in zip(body, ordered):
        classes = [c for c, on in (("grpo", row.is_grpo), ("failed", row.status == FAILED),
                                   ("stopped", row.status not in (FINISHED, FAILED))) if on]
        css = f" class='{' '.join(classes)}'" if classes else ""
        table += f"<tr{css}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>"
    table += "</tbody></table>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #bbb; padding: 3px 6px; text-align: left; }}
tr.grpo {{ background: #eee; font-weight: bold; }}
tr.stopped {{ font-style: italic; }}
tr.failed {{ color: #a00; }}
figure {{ display: inline-block; margin: 1em 1em 0 0; }}
img {{ max-width: 100%; }}
pre {{ background: #f4f4f4; padding: 1em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{''.join(f'<p>{html.escape(line)}</p>' for line in findings)}
<h2>Trials</h2>
<p>{html.escape(legend)} Stopped trials in italics.</p>
{table}
<h2>{html.escape(best_heading)}</h2>
<pre id="best-config">{html.escape(best_yaml)}</pre>
<h2>Plots</h2>
{image(plots['val_accuracy'], f'Validation accuracy against step, every trial (GRPO dashed black; hollow end: stopped early; dotted: step {comparison.step})')}
{image(plots['entropy'], 'Entropy against step, every trial (GRPO dashed black; hollow end: stopped early)')}
{image(plots['importance'], f'Parameter importance for {comparison.name} at step {comparison.step}')}
{image(plots['accuracy_vs_parameters'], f'{comparison.name.capitalize()} at step {comparison.step} against each searched parameter (hollow: stopped early)')}
</body></html>
"""
    (out_dir / "report.html").write_text(page)
    return {"html": out_dir / "report.html", "markdown": out_dir / "report.md", **plots}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment_dir", help="the sweep's experiment folder: a local path or a URI (s3://bucket/prefix/<name>)")
    parser.add_argument("--out", default=None, help="output folder, a local path or a URI (default: <experiment dir>/report)")
    args = parser.parse_args(argv)
    try:
        files = write_report(args.experiment_dir, args.out)
    except (ConfigError, storage.StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {files['html']} and {files['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
