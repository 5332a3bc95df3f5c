"""`python -m tuning.methods --config tuning/sweeps/methods_hesitant.yaml`: every method tuned
with the same budget, then the best trial of each compared at one step.

A methods file is a sweep file (tuning/space.py) whose `parameters` and `points_to_evaluate`
are given per method; everything that makes the budget (`overrides`, total steps included,
`search`, `asha`) is written once, so it cannot differ between methods:

```yaml
name: hesitant-methods
storage: sweeps
base_config: ../../pipelines/recipes/toy_hesitant.yaml
overrides: {total_steps: 20}
search: {num_trials: 4, algorithm: tpe, seed: 0}
asha: null
methods:
  mentor:
    parameters: {guidance.entropy_quantile: {uniform: [0.80, 0.99]}}
    points_to_evaluate: [{guidance.entropy_quantile: 0.95}]
  luffy:
    parameters: {algorithm.shaping_gamma: {loguniform: [0.01, 1.0]}}
```

Each method's sweep is an ordinary sweep in `<storage>/<name>/<method>/` (resumable, with its
own `python -m tuning.report`); the same command run again resumes the one that was cut off.
Then `<storage>/<name>/report/report.md` ranks all trials of all methods together at the latest
step every trial reached (the rule of tuning/report.py) and names each method's best trial.
Picking the best of N noisy trials flatters every method alike; the report also gives each
method's median, which does not.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mentor_ray import storage
from mentor_ray.config import ConfigError
from mentor_ray.core.methods import METHODS
from tuning.space import METHOD, SweepSpec, read_yaml_mapping, sweep_from_dict

BUDGET_KEYS = ("name", "storage", "base_config", "overrides", "search", "asha")
PER_METHOD_KEYS = ("parameters", "points_to_evaluate")
REPORT_FOLDER = "report"


def load_methods_sweep(path: str | Path, storage_root: str | None = None) -> dict[str, SweepSpec]:
    """Each method's sweep, in the file's order; every problem of every method in one error."""
    path = Path(path)
    data = read_yaml_mapping(path, "methods sweep file")
    source = f"methods sweep file {path}"
    problems = [f"{key}: unknown key (allowed: {sorted((*BUDGET_KEYS, 'methods'))})"
                for key in sorted(set(data) - {*BUDGET_KEYS, "methods"})]
    methods = data.get("methods")
    if not isinstance(methods, dict) or len(methods) < 2:
        problems.append("methods: must map at least two method names to their parameters")
        methods = {}
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        problems.append(f"name={name!r}: must be a folder name (no '/')")
    overrides = data.get("overrides") or {}
    if isinstance(overrides, dict) and METHOD in overrides:
        problems.append(f"overrides.{METHOD}: each method's sweep sets it; name methods under methods:")
    root = str(storage_root if storage_root is not None else data.get("storage", "sweeps")).rstrip("/")
    specs: dict[str, SweepSpec] = {}
    for method, given in methods.items():
        where = f"methods.{method}"
        if method not in METHODS:
            problems.append(f"{where}: not a method (one of {', '.join(METHODS)})")
            continue
        if not isinstance(given, dict) or set(given) - set(PER_METHOD_KEYS):
            problems.append(f"{where}: must be a mapping with {' and '.join(PER_METHOD_KEYS)} only"
                            " (the budget: overrides, search and asha, is shared)")
            continue
        sweep = {key: data[key] for key in BUDGET_KEYS if key in data}
        sweep.update(name=method, storage=f"{root}/{name}", overrides={**(overrides if isinstance(overrides, dict) else {}), METHOD: method},
                     **{key: given[key] for key in PER_METHOD_KEYS if key in given})
        try:
            specs[method] = sweep_from_dict(sweep, f"{source} ({where})", base_dir=path.parent)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(problems))
    return specs


def run_methods(specs: dict[str, SweepSpec], *, ray_address: str | None = None, verbose: bool = False, say=print) -> Path | str:
    """Each method's sweep in turn (a finished one is only reread), then the report."""
    import ray

    from tuning.space import check_sweep
    from tuning.sweep import run_sweep

    for spec in specs.values():  # every method's space checked before the first trial starts
        check_sweep(spec)
    for i, (method, spec) in enumerate(specs.items(), 1):
        say(f"method {i}/{len(specs)}: {METHODS[method].display_name} ({spec.experiment})")
        run_sweep(spec, ray_address=ray_address, verbose=verbose, say=say)
        if ray_address is None:
            ray.shutdown()  # each method's sweep on a fresh local instance: no leftover of one reaches the next
    return write_methods_report(storage.parent(next(iter(specs.values())).experiment), list(specs))


@dataclass
class MethodBest:
    method: str
    trials: int
    ranked: int
    best: Any  # TrialRow | None
    best_value: float
    median_value: float
    searched: dict[str, Any]


def compare_methods(root: Path, methods: list[str]):
    """All trials of all methods ranked together at the step every trial reached; per method
    its best trial there and its median."""
    from tuning.report import asha_rungs, compare_trials, load_rows

    loaded = {method: load_rows(Path(root) / method) for method in methods}
    rows = [row for _, method_rows in loaded.values() for row in method_rows]
    rungs = sorted({s for method, (spec, method_rows) in loaded.items() for s in asha_rungs(Path(root) / method, spec, method_rows)})
    comparison = compare_trials(rows, rungs)
    bests = []
    for method, (spec, method_rows) in loaded.items():
        ids = {row.trial_id for row in method_rows}
        ranked = [row for row in comparison.ranking if row.trial_id in ids]
        values = [comparison.value(row) for row in ranked]
        best = ranked[0] if ranked else None
        bests.append(MethodBest(method, len(method_rows), len(ranked), best, values[0] if values else math.nan,
                                statistics.median(values) if values else math.nan,
                                best.searched_values(spec) if best else {}))
    bests.sort(key=lambda b: (-b.best_value if not math.isnan(b.best_value) else math.inf, b.method))
    return loaded, comparison, bests


def _curves_figure(loaded, bests: list[MethodBest], step: int | None):
    from tuning.report import _figure

    figure = _figure(figsize=(8, 4.5))
    axis = figure.add_subplot()
    colors = dict(zip(loaded, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for method, (_, rows) in loaded.items():
        for row in rows:
            points = row.validations()
            if not points:
                continue
            is_best = any(b.best is row for b in bests)
            axis.plot(*zip(*points), color=colors.get(method, "gray"), alpha=1.0 if is_best else 0.25,
                      linewidth=2.2 if is_best else 1.0, label=f"{METHODS[method].display_name} best" if is_best else None, marker="o" if is_best else None)
    if step is not None:
        axis.axvline(step, color="black", linestyle=":", linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("validation accuracy (greedy)")
    axis.set_title("Validation accuracy: each method's best trial (bold) and its other trials (faint)")
    axis.legend(loc="best")
    return figure


def write_methods_report(root: str | Path, methods: list[str]) -> Path:
    """`<root>/report/report.md` and its plot, and each method's own sweep report."""
    from tuning.report import VAL, _fmt, _save, write_report

    root = Path(root)
    loaded, comparison, bests = compare_methods(root, methods)
    out = root / REPORT_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    for method in methods:
        write_report(root / method, out / method)
    plot = _save(_curves_figure(loaded, bests, comparison.step), out / "best_trials.png")
    spec = next(iter(loaded.values()))[0]
    any_config = next((row.config for _, rows in loaded.values() for row in rows if row.config is not None), None)
    steps = any_config.total_steps if any_config is not None else "?"
    asha = f"ASHA on {spec.asha.metric} from step {spec.asha.grace_period}" if spec.asha else "no early stopping"
    shared = yaml.safe_dump({k: v for k, v in spec.overrides.items() if k != METHOD}, default_flow_style=True, width=10_000).strip()
    measured = "greedy validation accuracy" if comparison.quantity == VAL else "running on-policy accuracy"
    budget = (f"Budget per method: {spec.search.num_trials} trials of {steps} steps ({spec.search.algorithm} search, "
              f"seed {spec.search.seed}, {asha}); the same overrides for all: `{shared}`.")
    header = (f"| method | trials (ranked) | best trial | best {comparison.name} @ step {comparison.step} | median | "
              "best trial's final val acc | step-0 val acc | best trial's settings |")
    lines = [
        f"# Methods tuned with the same budget: {root.name}", "", budget,
        f"All trials are compared at step {comparison.step}: {comparison.why}. The number is {measured} there.",
        "The best of N noisy trials flatters each method alike; the median does not.", "",
        header, "|---|---|---|---|---|---|---|---|",
    ]
    for b in bests:
        start = next((v for s, v in b.best.validations() if s == 0), math.nan) if b.best else math.nan
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in b.searched.items())
        lines.append(f"| {METHODS[b.method].display_name} | {b.trials} ({b.ranked}) | {b.best.trial_id if b.best else '-'} | "
                     f"{_fmt(b.best_value)} | {_fmt(b.median_value)} | {_fmt(b.best.final_val() if b.best else math.nan)} | "
                     f"{_fmt(start)} | {settings} |")
    lines += ["", f"![best trials]({plot.name})", "", "Each method's own sweep report: "
              + ", ".join(f"[{METHODS[m].display_name}]({m}/report.md)" for m in methods), ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="methods sweep file (tuning/sweeps/methods_*.yaml)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument("--storage", default=None, help="where the methods' experiment folder goes, instead of the file's storage")
    parser.add_argument("--report-only", action="store_true", help="write the report of sweeps already run; train nothing")
    parser.add_argument("--verbose", action="store_true", help="show library logs on the console")
    args = parser.parse_args(argv)
    from tuning.sweep import exit_code_of

    def run() -> None:
        specs = load_methods_sweep(args.config, args.storage)
        if args.report_only:
            report = write_methods_report(storage.parent(next(iter(specs.values())).experiment), list(specs))
        else:
            report = run_methods(specs, ray_address=args.address, verbose=args.verbose)
        print(f"methods report: {report}")

    return exit_code_of(run)


if __name__ == "__main__":
    # As tuning.sweep: the importable module's main, so Tune pickles its classes by reference.
    from tuning.methods import main as methods_main

    sys.exit(methods_main())
