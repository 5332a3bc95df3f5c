"""`python -m tuning.report <experiment dir> [--out DIR]`: a sweep's report, for people.

Writes `report.html` (self-contained: plots embedded, no scripts, no network), `report.md` and
the plots as PNGs beside them (default: `<experiment dir>/report/`). It reads what the sweep
left: `sweep.yaml`, the ledger `trials.json`, and each trial's run folder (its
`metrics.jsonl`, read once per step: a step a resumed run re-ran counts once, its last record).
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mentor_ray.config import ConfigError, MentorConfig, load_config
from mentor_ray.metrics import end_of_guidance_step, read_metrics, window_mean
from tuning.space import GUIDANCE_RATIO, SweepSpec, load_sweep
from tuning.sweep import LEDGER_FILE, SPEC_FILE, TrialRecord, SweepLedger

VAL = "val/greedy_accuracy"
ENTROPY = "rollout/entropy_mean"


@dataclass
class TrialRow:
    record: TrialRecord
    config: MentorConfig | None
    history: list[dict[str, float]]

    @property
    def is_grpo(self) -> bool:
        return self.config is not None and self.config.rollout.n_mixed == 0

    @property
    def label(self) -> str:
        return f"{self.record.trial_id}" + (" (GRPO)" if self.is_grpo else "")

    def final_val(self) -> float:
        values = [r[VAL] for r in self.history if VAL in r]
        return values[-1] if values else math.nan

    def best_val(self) -> float:
        values = [r[VAL] for r in self.history if VAL in r]
        return max(values) if values else math.nan

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


def load_rows(experiment_dir: Path) -> tuple[SweepSpec, list[TrialRow]]:
    experiment_dir = Path(experiment_dir)
    if not (experiment_dir / SPEC_FILE).is_file() or not (experiment_dir / LEDGER_FILE).is_file():
        raise ConfigError(f"{experiment_dir}: not a sweep folder (needs {SPEC_FILE} and {LEDGER_FILE}; run python -m tuning.sweep first)")
    spec = load_sweep(experiment_dir / SPEC_FILE)
    ledger = SweepLedger(experiment_dir, total_steps=0)
    rows = []
    for record in sorted(ledger.records.values(), key=lambda r: r.trial_id):
        run_dir = Path(record.run_dir)
        config = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
        history = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
        rows.append(TrialRow(record, config, history))
    return spec, rows


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """Highest final validation accuracy among trials that ran to the end (else any that ran)."""
    for pool in ([r for r in rows if r.record.status == "finished"], [r for r in rows if r.record.status != "failed"]):
        scored = [r for r in pool if not math.isnan(r.final_val())]
        if scored:
            return max(scored, key=lambda r: (r.final_val(), r.best_val()))
    return None


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
# Plots.


def _curves(rows: list[TrialRow], key: str, title: str, ylabel: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    drawn = 0
    for row in rows:
        points = [(r["step"], r[key]) for r in row.history if key in r and not math.isnan(r[key])]
        if not points:
            continue
        steps, values = zip(*points)
        style = {"color": "black", "linestyle": "--", "linewidth": 2.2} if row.is_grpo else {"linewidth": 1.2, "alpha": 0.85}
        axes.plot(steps, values, marker="o", markersize=3, label=row.label, **style)
        drawn += 1
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    if drawn:
        axes.legend(fontsize=7, ncol=2)
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _scored(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.record.status != "failed" and not math.isnan(r.final_val())]


def _accuracy_vs_parameters(spec: SweepSpec, rows: list[TrialRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [p.key for p in spec.parameters]
    columns = min(3, len(keys))
    lines = math.ceil(len(keys) / columns)
    figure, axes_grid = plt.subplots(lines, columns, figsize=(4 * columns, 3.2 * lines), squeeze=False)
    scored = _scored(rows)
    for index, key in enumerate(keys):
        axes = axes_grid[index // columns][index % columns]
        for row in scored:
            value = row.searched_values(spec)[key]
            axes.scatter([value], [row.final_val()], color="black" if row.is_grpo else "tab:blue",
                         marker="s" if row.is_grpo else "o", s=30)
        axes.set_xlabel(key)
        axes.set_ylabel("final val accuracy")
    for index in range(len(keys), lines * columns):
        axes_grid[index // columns][index % columns].axis("off")
    figure.suptitle("Final validation accuracy against each searched parameter (squares: GRPO)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def parameter_importance(spec: SweepSpec, rows: list[TrialRow]) -> dict[str, float]:
    """Optuna's fANOVA-free importance (PED-ANOVA) of each parameter for the final validation
    accuracy, over the trials that have one. Empty if fewer than 3 trials do, or none differ."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scored = _scored(rows)
    if len(scored) < 3 or len({r.final_val() for r in scored}) < 2:
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
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=row.final_val()))
    if len(study.trials) < 3:
        return {}
    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError):
        return {}


def _importance_plot(importance: dict[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 0.5 + 0.5 * max(len(importance), 1)))
    if importance:
        names = list(importance)[::-1]
        axes.barh(names, [importance[n] for n in names], color="tab:green")
        axes.set_xlabel("importance for final validation accuracy (Optuna PED-ANOVA)")
    else:
        axes.text(0.5, 0.5, "too few scored trials for importances", ha="center", va="center", transform=axes.transAxes)
        axes.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------
# The page and the summary.


def _table(spec: SweepSpec, rows: list[TrialRow]) -> tuple[list[str], list[list[str]]]:
    keys = [p.key for p in spec.parameters]
    header = ["trial", *keys, "final val acc", "best val acc", "entropy at end of guidance", "steps", "status", "error"]
    body = []
    for row in rows:
        values = row.searched_values(spec)
        body.append([
            row.label, *[_fmt(values.get(k, "-")) for k in keys], _fmt(row.final_val()), _fmt(row.best_val()),
            _fmt(row.entropy_end_of_guidance()), str(row.record.steps), row.record.status, row.record.error or "",
        ])
    return header, body


def _findings(spec: SweepSpec, rows: list[TrialRow], best: TrialRow | None) -> list[str]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.record.status] = counts.get(row.record.status, 0) + 1
    lines = [f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]
    if best is not None:
        lines.append(f"Best final validation accuracy: {best.final_val():.3f}, trial {best.label}.")
    grpo = [r for r in _scored(rows) if r.is_grpo]
    if grpo:
        lines.append("GRPO (guidance ratio 0): final validation accuracy " + ", ".join(f"{r.final_val():.3f}" for r in grpo) + ".")
    return lines


def write_report(experiment_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    spec, rows = load_rows(experiment_dir)
    out_dir = Path(out_dir) if out_dir else Path(experiment_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    best = best_row(rows)
    importance = parameter_importance(spec, rows)
    plots = {
        "val_accuracy": _curves(rows, VAL, "Validation accuracy (greedy) per trial; dashed black: GRPO", "accuracy", out_dir / "val_accuracy.png"),
        "entropy": _curves(rows, ENTROPY, "Policy entropy (on-policy tokens) per trial; dashed black: GRPO", "mean entropy (nats)", out_dir / "entropy.png"),
        "importance": _importance_plot(importance, out_dir / "importance.png"),
        "accuracy_vs_parameters": _accuracy_vs_parameters(spec, rows, out_dir / "accuracy_vs_parameters.png"),
    }
    header, body = _table(spec, rows)
    findings = _findings(spec, rows, best)
    best_yaml = best_config_yaml(spec, best) if best else "# no trial has a validation accuracy"
    title = f"Sweep report: {spec.name}"

    md = [f"# {title}", "", *findings, "", "## Trials", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
    md += ["", "## Best configuration", "", "```yaml", best_yaml, "```", "", "## Plots", ""]
    md += [f"![{name}]({path.name})" for name, path in plots.items()]
    if importance:
        md += ["", "## Parameter importance", "", *[f"- {k}: {v:.3f}" for k, v in importance.items()]]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    def image(path: Path, alt: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'

    table = "<table id='trials'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
    for line, row in zip(body, rows):
        css = " class='grpo'" if row.is_grpo else (" class='failed'" if row.record.status == "failed" else "")
        table += f"<tr{css}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>"
    table += "</tbody></table>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #bbb; padding: 3px 6px; text-align: left; }}
tr.grpo {{ background: #eee; font-weight: bold; }}
tr.failed {{ color: #a00; }}
figure {{ display: inline-block; margin: 1em 1em 0 0; }}
img {{ max-width: 100%; }}
pre {{ background: #f4f4f4; padding: 1em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{''.join(f'<p>{html.escape(line)}</p>' for line in findings)}
<h2>Trials</h2>
{table}
<h2>Best configuration</h2>
<pre id="best-config">{html.escape(best_yaml)}</pre>
<h2>Plots</h2>
{image(plots['val_accuracy'], 'Validation accuracy against step, every trial (GRPO dashed black)')}
{image(plots['entropy'], 'Entropy against step, every trial (GRPO dashed black)')}
{image(plots['importance'], 'Parameter importance for final validation accuracy')}
{image(plots['accuracy_vs_parameters'], 'Final validation accuracy against each searched parameter')}
</body></html>
"""
    (out_dir / "report.html").write_text(page)
    return {"html": out_dir / "report.html", "markdown": out_dir / "report.md", **plots}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <experiment dir>/report)")
    args = parser.parse_args(argv)
    try:
        files = write_report(args.experiment_dir, args.out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {files['html']} and {files['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
