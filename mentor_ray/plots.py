"""PNG plots of one or more runs' metrics.jsonl against step (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

from mentor_ray import storage
from mentor_ray.metrics import METRICS_FILE, read_metrics
from mentor_ray.timeline import ROLES, TIMELINE_FILE, clipped, read_chrome_trace

# (file name, title, [(metric key, label suffix)])
PANELS = (
    ("val_accuracy.png", "Validation accuracy (greedy)", [("val/greedy_accuracy", "")]),
    ("entropy.png", "Policy entropy (on-policy tokens)", [("rollout/entropy_mean", "mean"), ("rollout/entropy_p95", "p95")]),
    ("response_length.png", "Response length (tokens)", [("rollout/on_policy_response_length", "on-policy"), ("rollout/mixed_response_length", "mixed")]),
    ("reward.png", "Rollout reward", [("rollout/on_policy_reward", "on-policy"), ("rollout/mixed_reward", "mixed")]),
)


def plot_runs(runs: dict[str, str | Path], out_dir: Path) -> list[Path]:
    """One PNG per panel; each run (label -> run folder, a local path or a URI) is drawn into
    the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    histories = {label: read_metrics(storage.join(str(folder), METRICS_FILE)) for label, folder in runs.items()}
    written = []
    for file_name, title, series in PANELS:
        figure, axes = plt.subplots(figsize=(6, 4))
        drawn = 0
        for label, history in histories.items():
            for key, suffix in series:
                points = [(r["step"], r[key]) for r in history if key in r and r[key] is not None and not math.isnan(r[key])]
                if points:
                    steps, values = zip(*points)
                    axes.plot(steps, values, marker="o", markersize=3, label=" ".join(p for p in (label, suffix) if p))
                    drawn += 1
        axes.set_title(title)
        axes.set_xlabel("step")
        if drawn:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        written.append(_save(figure, out_dir / file_name))
    return written


# Steps the timeline picture shows: the last few, where a run has settled into its rhythm.
TIMELINE_STEPS = 4


def plot_timeline(run_dir: str | Path, out_dir: Path, last_steps: int = TIMELINE_STEPS) -> Path | None:
    """`timeline.png`: one lane per role, its busy intervals over the run's last steps, step
    boundaries as dotted lines; in lockstep the lanes take turns, with overlap they run together.
    None when the run wrote no timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    location = storage.join(str(run_dir), TIMELINE_FILE)
    if not storage.exists(location):
        return None
    busy, steps = read_chrome_trace(storage.read_text(location))
    if not steps:
        return None
    shown = sorted(steps)[-last_steps:]
    start, end = shown[0][1], shown[-1][2]
    roles = [role for role in ROLES if role in busy]
    figure, axes = plt.subplots(figsize=(9, 0.6 * len(roles) + 1.4))
    for lane, role in enumerate(roles):
        spans = [(a - start, b - a) for a, b in clipped(busy[role], start, end)]
        axes.broken_barh(spans, (lane - 0.35, 0.7), color=f"C{lane}")
    for step, step_start, _ in shown:
        axes.axvline(step_start - start, color="grey", linestyle=":", linewidth=1)
        axes.text(step_start - start, len(roles) - 0.45, f" step {step}", fontsize=8, color="grey", va="bottom")
    axes.set_yticks(range(len(roles)), [role.replace("_", " ") for role in roles])
    axes.set_ylim(-0.6, len(roles) - 0.1)
    axes.set_xlim(0, end - start)
    axes.set_xlabel("seconds")
    axes.set_title(f"Where the time goes: busy intervals of each role, steps {shown[0][0]}-{shown[-1][0]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save(figure, out_dir / "timeline.png")


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# plot_seeds' pictures: (file name, title, metric against step); one is left out when no run has its metric.
SEED_PANELS = (
    ("seeds_val_accuracy.png", "Validation accuracy (greedy), every seed", "val/greedy_accuracy"),
    ("seeds_entropy.png", "Policy entropy (on-policy tokens), every seed", "rollout/entropy_mean"),
    ("seeds_accuracy.png", "Accuracy of the policy's own samples (T=1), every seed", "rollout/on_policy_accuracy"),
    ("seeds_response_length.png", "Response length of the policy's own samples (tokens), every seed",
     "rollout/on_policy_response_length"),
    ("seeds_habits_useful.png", "Useful habits (check, verify) per on-policy response, every seed", "habits/on_policy_useful"),
    ("seeds_habits_filler.png", "Filler (okay, wait) per on-policy response, every seed", "habits/on_policy_filler"),
)
# Line styles of plot_seeds' methods, in the order they first appear (MENTOR first: solid).
SEED_LINE_STYLES = ("-", "--", ":", "-.")


def plot_seeds(pairs: dict[int, dict[str, Path]], out_dir: Path) -> list[Path]:
    """Validation accuracy, entropy, the policy's own accuracy, response length and habits against step for every seed's runs (seed -> label -> run
    folder: MENTOR's, GRPO's, ...), one colour per seed and one line style per label (solid,
    dashed, dotted, dash-dot, in the order the labels first appear): the spread across seeds at
    a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(label for runs in pairs.values() for label in runs))
    styles = {label: SEED_LINE_STYLES[index % len(SEED_LINE_STYLES)] for index, label in enumerate(labels)}
    written = []
    histories = {(seed, label): read_metrics(Path(folder) / "metrics.jsonl") for seed, runs in pairs.items() for label, folder in runs.items()}
    for file_name, title, key in SEED_PANELS:
        if not any(key in r for history in histories.values() for r in history):
            continue  # runs from before the metric existed
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for index, (seed, runs) in enumerate(sorted(pairs.items())):
            for label, folder in runs.items():
                history = histories[(seed, label)]
                points = [(r["step"], r[key]) for r in history if r.get(key) is not None and not math.isnan(r[key])]
                if points:
                    axes.plot(*zip(*points), styles[label], color=f"C{index}", marker="o" if key.startswith("val") else None,
                              markersize=3, label=f"{label.upper()} seed {seed}")
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.legend(fontsize=7, ncol=max(2, len(pairs)))  # a column per seed
        written.append(_save(figure, out_dir / file_name))
    return written


def main(argv: list[str] | None = None) -> None:
    """python -m mentor_ray.plots OUT_DIR LABEL=RUN_DIR [LABEL=RUN_DIR ...]"""
    import argparse

    parser = argparse.ArgumentParser(description="Draw runs into the same plots (e.g. MENTOR vs GRPO, LUFFY, QuestA).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "metrics.jsonl").is_file():
            parser.error(f"{item!r}: expected LABEL=RUN_DIR with RUN_DIR/metrics.jsonl present")
        runs[label] = Path(folder)
    for path in plot_runs(runs, args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
