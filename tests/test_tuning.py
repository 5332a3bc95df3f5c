"""Ray Tune over whole runs: the sweep file's checks, what a trial needs, the report, and one
real sweep (Optuna + ASHA on the toy world) that is interrupted, restored and completed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mentor_ray.config import ConfigError
from mentor_ray.metrics import OBJECTIVE_WINDOW, objective_metrics
from pipelines.resources import check_fits, run_needs
from tuning.space import check_sweep, full_points, load_sweep, sweep_from_dict, trial_config
from tuning.sweep import DEFAULT_SWEEP, concurrent_trials, trial_needs

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "pipelines" / "recipes" / "toy_mentor.yaml")


def _sweep(tmp_path, **changes):
    data = {
        "name": "t", "storage": str(tmp_path), "base_config": RECIPE,
        "overrides": {"total_steps": 3, "eval.every_steps": 2},
        "parameters": {
            "guidance.entropy_quantile": {"uniform": [0.8, 0.99]},
            "rollout.guidance_ratio": {"choice": [0.0, 1 / 3]},
        },
        "search": {"num_trials": 2},
        "asha": {"grace_period": 2},
    }
    data.update(changes)
    return sweep_from_dict(data, "test sweep")


# --- the sweep file --------------------------------------------------------------------------


def test_an_entry_the_config_refuses_stops_the_sweep_before_any_trial(tmp_path):
    import ray

    from tuning.sweep import run_sweep

    spec = _sweep(tmp_path, parameters={"guidance.entropy_quantile": {"uniform": [0.8, 1.5]}})
    with pytest.raises(ConfigError, match=r"parameters\.guidance\.entropy_quantile: value 1\.5 is refused.*must be in \(0, 1\)"):
        run_sweep(spec)
    # Refused before anything started: no Ray instance, no experiment folder.
    assert not ray.is_initialized()
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"parameters": {"guidance.entropy_quantile": {"uniform": [0.99, 0.8]}}}, r"low 0\.99 must be below high 0\.8"),
        ({"parameters": {"guidance.entropy_quantile": {"gaussian": [0.9, 0.1]}}}, r"needs exactly one of"),
        ({"parameters": {"guidance.decay_step": {"int": [4, 12]}}}, r"guidance\.decay_step: unknown key.*did you mean guidance\.decay_steps"),
        ({"parameters": {"rollout.guidance_ratio": {"choice": [0.0, 1.0]}}}, r"guidance_ratio=1\.0: must be in \[0, 1\)"),
        # N1 + N2 = 12: a ratio of 0.9 leaves one on-policy sample, and GRPO needs a group.
        ({"parameters": {"rollout.guidance_ratio": {"choice": [0.9]}}}, r"n_on_policy.*must be >= 2"),
        ({"points_to_evaluate": [{"guidance.entropy_quantile": 0.5}]}, r"points_to_evaluate\[0\].*outside the parameter's distribution"),
        ({"points_to_evaluate": [{"guidance.alpha_0": 0.5}]}, r"not a searched parameter"),
        ({"search": {"num_trials": 0}}, r"num_trials=0: must be >= 1"),
        ({"search": {"algorithm": "grid"}}, r"algorithm='grid'"),
        ({"asha": {"grace_period": 9}}, r"grace_period=9: more than total_steps=3"),
        ({"overrides": {"eval.every_steps": 0}}, r"objective/val_accuracy needs validation"),
        ({"colour": "blue"}, r"colour: unknown key"),
    ],
)
def test_bad_sweep_files_are_refused_naming_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        check_sweep(_sweep(tmp_path, **changes))


def test_guidance_ratio_keeps_samples_per_prompt_and_tau_floor_scales_with_the_vocabulary(tmp_path, toy_world):
    import math

    from transformers import AutoTokenizer

    spec = check_sweep(_sweep(tmp_path, parameters={
        "rollout.guidance_ratio": {"choice": [0.0, 1 / 6, 1 / 3, 0.5]},
        "guidance.tau_floor": {"uniform": [0.03, 0.15], "times": "log_vocab"},
    }))
    for ratio, (n1, n2) in {0.0: (12, 0), 1 / 6: (10, 2), 1 / 3: (8, 4), 0.5: (6, 6)}.items():
        rollout = trial_config(spec, {"rollout.guidance_ratio": ratio}).rollout
        assert (rollout.n_on_policy, rollout.n_mixed) == (n1, n2)
    log_vocab = math.log(len(AutoTokenizer.from_pretrained(toy_world.policy_dir)))
    assert trial_config(spec, {"guidance.tau_floor": 0.1}).guidance.tau_floor == pytest.approx(0.1 * log_vocab)
    # A partial point takes the base config's values, in the file's units.
    spec.points_to_evaluate = [{"rollout.guidance_ratio": 0.0}]
    (point,) = full_points(spec)
    assert point["rollout.guidance_ratio"] == 0.0
    assert point["guidance.tau_floor"] * log_vocab == pytest.approx(0.3)  # the toy recipe's floor


def test_the_default_sweep_file_is_valid_and_holds_the_grpo_baseline():
    spec = check_sweep(load_sweep(DEFAULT_SWEEP))
    assert spec.search.num_trials >= 8
    configs = [trial_config(spec, point) for point in full_points(spec)]
    assert any(c.rollout.n_mixed == 0 for c in configs)
    assert all(c.rollout.n_on_policy + c.rollout.n_mixed == 12 for c in configs)


# --- what a trial needs ------------------------------------------------------------------------


def test_what_a_run_needs_decides_the_preflight_and_the_concurrency(tmp_path):
    from mentor_ray.config import load_config

    mentor = load_config(RECIPE)
    grpo = load_config(RECIPE, ["rollout.n_mixed=0"])
    assert (run_needs(mentor).engines, run_needs(grpo).engines) == (2, 1)
    assert run_needs(mentor).cpus == pytest.approx(2 * 1.0 + 1.0 + 0.5 + 0.1)
    gpu = load_config(RECIPE, ["scaling.use_gpu=true", "scaling.gpus_per_engine=2", "scaling.num_learner_workers=4"])
    assert run_needs(gpu).gpus == 2 * 2 + 4
    with pytest.raises(ConfigError, match=r"this run needs 6\.6 CPUs, 8 GPUs \(2 engines, 4 learners.*the cluster has 16 CPUs and 4 GPUs"):
        check_fits(gpu, {"CPU": 16, "GPU": 4})
    check_fits(gpu, {"CPU": 16, "GPU": 8})

    spec = check_sweep(_sweep(tmp_path, search={"num_trials": 4, "max_concurrent_trials": 3}))
    # The sweep counts the trial with the most engines (ratio > 0) plus its driver.
    assert trial_needs(spec).cpus == pytest.approx(3.6 + 0.1)
    assert concurrent_trials(spec, {"CPU": 16})[0] == 3  # 4 fit; the file caps at 3
    assert concurrent_trials(spec, {"CPU": 8})[0] == 2
    with pytest.raises(ConfigError, match=r"one trial needs 3\.7 CPUs"):
        concurrent_trials(spec, {"CPU": 3})


def test_the_objective_is_there_every_step_and_survives_a_resume():
    state = {"accuracy_window": [], "val_accuracy": 0.25}
    accuracies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    seen = []
    for step, accuracy in enumerate(accuracies, start=1):
        metrics = {"rollout/on_policy_accuracy": accuracy}
        if step == 4:
            metrics["val/greedy_accuracy"] = 0.5
        seen.append(objective_metrics(state, metrics))
        if step == 3:
            state = json.loads(json.dumps(state))  # what a checkpoint keeps and a resume loads
    assert seen[0] == {"objective/running_accuracy": pytest.approx(0.1), "objective/val_accuracy": 0.25}
    assert seen[3]["objective/val_accuracy"] == 0.5 and seen[6]["objective/val_accuracy"] == 0.5
    assert seen[6]["objective/running_accuracy"] == pytest.approx(sum(accuracies[-OBJECTIVE_WINDOW:]) / OBJECTIVE_WINDOW)


# --- the report -------------------------------------------------------------------------------


def _fake_experiment(root: Path) -> Path:
    """A finished sweep's folder as tuning.sweep leaves it, with known numbers: trial b is GRPO,
    trial c was resumed after step 2 (its metrics.jsonl holds step 2 twice), d failed."""
    from mentor_ray.config import load_config, save_config

    root.mkdir(parents=True)
    spec_file = root / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "fake", "storage": str(root.parent), "base_config": RECIPE,
        "overrides": {"total_steps": 3, "eval.every_steps": 1},
        "parameters": {"guidance.entropy_quantile": {"uniform": [0.8, 0.99]},
                       "rollout.guidance_ratio": {"choice": [0.0, 0.3333]}},
        "search": {"num_trials": 4},
    }))
    trials = {
        "a": ({"guidance.entropy_quantile": 0.9, "rollout.guidance_ratio": 0.3333}, [0.3, 0.5, 0.7], "finished"),
        "b": ({"guidance.entropy_quantile": 0.95, "rollout.guidance_ratio": 0.0}, [0.3, 0.4, 0.45], "finished"),
        "c": ({"guidance.entropy_quantile": 0.85, "rollout.guidance_ratio": 0.3333}, [0.3, 0.55, 0.6], "finished"),
        "d": ({"guidance.entropy_quantile": 0.81, "rollout.guidance_ratio": 0.3333}, [], "failed"),
    }
    ledger = []
    for trial_id, (params, vals, status) in trials.items():
        run_dir = root / "runs" / f"trial-{trial_id}"
        run_dir.mkdir(parents=True)
        ratio = params["rollout.guidance_ratio"]
        n_mixed = round(ratio * 12)
        config = load_config(RECIPE, [f"guidance.entropy_quantile={params['guidance.entropy_quantile']}",
                                      f"rollout.n_on_policy={12 - n_mixed}", f"rollout.n_mixed={n_mixed}", "guidance.decay_steps=3"])
        save_config(config, run_dir / "config.yaml")
        records = [{"step": s + 1, "val/greedy_accuracy": v, "rollout/entropy_mean": 0.1 + 0.01 * s} for s, v in enumerate(vals)]
        if trial_id == "c":  # the run re-ran step 2 after a resume: the first record must not count
            records.insert(1, {"step": 2, "val/greedy_accuracy": 0.99, "rollout/entropy_mean": 9.0})
        if records:
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        ledger.append({"trial_id": trial_id, "params": params, "run_dir": str(run_dir), "status": status,
                       "steps": len(vals), "error": "ConfigError: data.train_path='/nope.jsonl': file does not exist" if status == "failed" else None,
                       "last": {}})
    (root / "trials.json").write_text(json.dumps(ledger))
    return root


def _markdown_table(markdown: str) -> dict[str, dict[str, str]]:
    """The report's trial table: trial label -> {column header: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    rows = [dict(zip(header, (c.strip() for c in line.split("|")[1:-1]))) for line in lines[1:]]
    return {row["trial"]: row for row in rows}


def test_the_report_counts_each_step_once_and_names_the_best_configuration(tmp_path):
    from tuning.report import write_report

    experiment = _fake_experiment(tmp_path / "fake")
    files = write_report(experiment)
    markdown = files["markdown"].read_text()
    rows = _markdown_table(markdown)
    assert (rows["a"]["final val acc"], rows["a"]["best val acc"]) == ("0.700", "0.700")
    assert rows["b (GRPO)"]["final val acc"] == "0.450"
    assert rows["c"]["best val acc"] == "0.600"  # the stale 0.99 of the re-run step is not counted
    assert rows["d"]["status"] == "× failed" and "file does not exist" in rows["d"]["error"]
    # Every trial ran to step 3 (no rung below it): they are compared there.
    assert [rows[t]["rank"] for t in ("a", "c", "b (GRPO)", "d")] == ["1", "2", "3", "-"]
    assert rows["a"]["val acc @ step 3"] == "0.700"
    best = yaml.safe_load(markdown.split("```yaml\n")[1].split("```")[0])
    assert best == {"guidance": {"entropy_quantile": 0.9}, "rollout": {"n_on_policy": 8, "n_mixed": 4}}
    for name in ("val_accuracy", "entropy", "importance", "accuracy_vs_parameters"):
        assert files[name].stat().st_size > 5000, name


# A toy-like sweep after ASHA: 12 steps, rungs at steps 4 and 8 (grace period 4, reduction factor 2).
TOY_ASHA = {"metric": "objective/running_accuracy", "mode": "max", "grace_period": 4, "reduction_factor": 2}
QUANTILE, RATIO = "guidance.entropy_quantile", "rollout.guidance_ratio"


def _asha_experiment(root: Path, trials: dict, eval_every: int = 4, total_steps: int = 12, ledger_steps: dict | None = None) -> Path:
    """A sweep folder as tuning.sweep leaves it. `trials`: id -> (quantile, guidance ratio,
    status, last step, {step: validation accuracy}); every step 1..last logs entropy and
    objective/running_accuracy (0.01 * step here, so it never decides a ranking by accident).
    `ledger_steps`: the ledger's step count where it differs from the last step logged."""
    from mentor_ray.config import load_config, save_config

    root.mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": root.name, "storage": str(root.parent), "base_config": RECIPE,
        "overrides": {"total_steps": total_steps, "eval.every_steps": eval_every},
        "parameters": {QUANTILE: {"uniform": [0.8, 0.99]}, RATIO: {"choice": [0.0, 0.3333]}},
        "search": {"num_trials": len(trials)}, "asha": TOY_ASHA,
    }))
    ledger = []
    for trial_id, (quantile, ratio, status, last, vals) in trials.items():
        run_dir = root / "runs" / f"trial-{trial_id}"
        run_dir.mkdir(parents=True)
        n_mixed = round(ratio * 12)
        config = load_config(RECIPE, [f"{QUANTILE}={quantile}", f"rollout.n_on_policy={12 - n_mixed}", f"rollout.n_mixed={n_mixed}",
                                      f"total_steps={total_steps}", f"eval.every_steps={eval_every}", "guidance.decay_steps=12"])
        save_config(config, run_dir / "config.yaml")
        records = [{"step": 0, "val/greedy_accuracy": 0.27}] if last else []
        for step in range(1, last + 1):
            record = {"step": step, "rollout/entropy_mean": 0.2, "objective/running_accuracy": 0.01 * step}
            if step in vals:
                record["val/greedy_accuracy"] = vals[step]
            records.append(record)
        if records:
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        ledger.append({"trial_id": trial_id, "params": {QUANTILE: quantile, RATIO: ratio}, "run_dir": str(run_dir), "status": status,
                       "steps": (ledger_steps or {}).get(trial_id, last), "error": "RuntimeError: boom" if status == "failed" else None, "last": {}})
    (root / "trials.json").write_text(json.dumps(ledger))
    return root


def test_the_report_ranks_trials_at_the_latest_rung_every_trial_reached_not_at_their_last_validation(tmp_path):
    """The finished trial leads on last validation (0.80 at step 12) but trails at step 4, the
    latest rung every trial reached; s4, stopped by ASHA at step 4, leads there and is named best.
    A trial stopped for a NaN at step 2 and a failed one do not pull the step back."""
    from tuning.report import accuracy_vs_parameters_figure, asha_rungs, compare_trials, curves_figure, load_rows, write_report

    experiment = _asha_experiment(tmp_path / "toy", {
        "fin": (0.90, 0.3333, "finished", 12, {4: 0.40, 8: 0.60, 12: 0.80}),
        "s4": (0.95, 0.3333, "stopped by ASHA", 4, {4: 0.55}),
        "s8": (0.85, 0.3333, "stopped by ASHA", 8, {4: 0.50, 8: 0.70}),
        "grpo": (0.95, 0.0, "stopped by ASHA", 4, {4: 0.35}),
        "nan": (0.81, 0.3333, "stopped (NaN)", 2, {}),
        "dead": (0.82, 0.3333, "failed", 0, {}),
    })
    spec, rows = load_rows(experiment)
    assert asha_rungs(experiment, spec, rows) == [4, 8]
    comparison = compare_trials(rows, [4, 8])
    assert comparison.step == 4 and comparison.quantity == "val/greedy_accuracy"
    assert [r.trial_id for r in comparison.ranking] == ["s4", "s8", "fin", "grpo"]
    assert comparison.values == {"s4": 0.55, "s8": 0.50, "fin": 0.40, "grpo": 0.35}
    assert set(comparison.unranked) == {"nan", "dead"}

    files = write_report(experiment)
    markdown = files["markdown"].read_text()
    assert "Trials are compared at step 4, the latest step every trial reached (an ASHA rung, where validation ran; ASHA's rungs are at steps 4, 8)." in markdown
    assert "Best at step 4: trial s4, val acc 0.550. It was stopped by ASHA at step 4" in markdown
    assert "Ranked by each trial's last validation instead, trial fin would lead (0.800 at step 12" in markdown
    table = _markdown_table(markdown)
    assert [table[t]["rank"] for t in ("s4", "s8", "fin", "grpo (GRPO)", "nan", "dead")] == ["1", "2", "3", "4", "-", "-"]
    assert list(table)[:4] == ["s4", "s8", "fin", "grpo (GRPO)"]  # in ranking order
    assert (table["s8"]["val acc @ step 4"], table["s8"]["final val acc"], table["fin"]["final val acc"]) == ("0.500", "0.700", "0.800")
    assert table["s4"]["status"] == "○ stopped by ASHA" and table["fin"]["status"] == "● finished"
    assert table["nan"]["status"] == "○ stopped (NaN)" and table["dead"]["status"] == "× failed"
    best = yaml.safe_load(markdown.split("```yaml\n")[1].split("```")[0])
    assert best == {"guidance": {"entropy_quantile": 0.95}, "rollout": {"n_on_policy": 8, "n_mixed": 4}}
    assert "## Parameter importance (for val acc at step 4)" in markdown

    # The accuracy-against-parameter plot: values at step 4; hollow for stopped, filled for finished.
    figure = accuracy_vs_parameters_figure(spec, rows, comparison)
    scatters = {c.get_gid(): c for c in figure.axes[0].collections}
    assert set(scatters) == {"finished|mentor", "stopped by ASHA|mentor", "stopped by ASHA|grpo"}
    assert sorted(scatters["stopped by ASHA|mentor"].get_offsets()[:, 1].tolist()) == [0.50, 0.55]
    assert scatters["finished|mentor"].get_offsets()[:, 1].tolist() == [0.40]
    assert len(scatters["stopped by ASHA|mentor"].get_facecolors()) == 0  # hollow
    assert len(scatters["stopped by ASHA|grpo"].get_facecolors()) == 0
    assert scatters["finished|mentor"].get_facecolors()[0][3] == 1.0  # filled
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "stopped by ASHA (hollow)" in legend and "finished (filled)" in legend

    # The curves: each line ends in its status's marker, and the comparison step is drawn.
    curves = curves_figure(rows, "val/greedy_accuracy", "t", "accuracy", comparison)
    ends = {line.get_gid(): line for line in curves.axes[0].lines if (line.get_gid() or "").startswith("end:")}
    assert set(ends) == {"end:fin", "end:s4", "end:s8", "end:grpo", "end:nan"}
    assert all(ends[f"end:{t}"].get_markerfacecolor() == "none" for t in ("s4", "s8", "grpo", "nan"))
    assert ends["end:fin"].get_markerfacecolor() != "none"
    assert list(ends["end:s8"].get_xdata()) == [8] and list(ends["end:nan"].get_xdata()) == [0]
    (step_line,) = [line for line in curves.axes[0].lines if line.get_gid() == "comparison-step"]
    assert list(step_line.get_xdata()) == [4, 4]


def test_when_the_only_finished_trial_is_best_at_the_common_step_the_report_says_so(tmp_path):
    """s4 (stopped at step 4, 0.62) would lead on last validation over the finished trial (0.58 at
    step 12); at step 4 the finished trial leads (0.65) and is named best."""
    from tuning.report import write_report

    experiment = _asha_experiment(tmp_path / "toy", {
        "fin": (0.90, 0.3333, "finished", 12, {4: 0.65, 8: 0.55, 12: 0.58}),
        "s4": (0.95, 0.3333, "stopped by ASHA", 4, {4: 0.62}),
        "s8": (0.85, 0.0, "stopped by ASHA", 8, {4: 0.50, 8: 0.60}),
    })
    markdown = write_report(experiment)["markdown"].read_text()
    table = _markdown_table(markdown)
    assert [table[t]["rank"] for t in ("fin", "s4", "s8 (GRPO)")] == ["1", "2", "3"]
    assert "Best at step 4: trial fin, val acc 0.650." in markdown
    assert "It is also the only trial that finished (ran to step 12)" in markdown
    assert "trial s4 would lead (0.620 at step 4" in markdown
    best = yaml.safe_load(markdown.split("```yaml\n")[1].split("```")[0])
    assert best == {"guidance": {"entropy_quantile": 0.9}, "rollout": {"n_on_policy": 8, "n_mixed": 4}}


def test_the_report_shows_a_step_logged_after_asha_stopped_a_trial_and_keeps_the_rung(tmp_path):
    """ASHA stopped s4 and s4b at step 4 (the ledger's count), but their runs logged step 5
    before the stop reached them (seen in a real sweep): they are still compared at rung 4."""
    from tuning.report import asha_rungs, compare_trials, load_rows, write_report

    experiment = _asha_experiment(tmp_path / "toy", {
        "fin": (0.90, 0.3333, "finished", 12, {4: 0.40, 8: 0.60, 12: 0.80}),
        "s4": (0.95, 0.3333, "stopped by ASHA", 5, {4: 0.55}),
        "s4b": (0.85, 0.3333, "stopped by ASHA", 5, {4: 0.45}),
    }, ledger_steps={"s4": 4, "s4b": 4})
    spec, rows = load_rows(experiment)
    comparison = compare_trials(rows, asha_rungs(experiment, spec, rows))
    assert comparison.step == 4 and [r.trial_id for r in comparison.ranking] == ["s4", "s4b", "fin"]
    markdown = write_report(experiment)["markdown"].read_text()
    assert _markdown_table(markdown)["s4"]["steps"] == "4 (logged to 5)" and _markdown_table(markdown)["fin"]["steps"] == "12"
    assert "It was stopped by ASHA at step 4 (its run logged up to step 5 before it ended)" in markdown


@pytest.mark.parametrize("eval_every", [3, 5])
def test_without_validation_at_the_rung_the_report_uses_what_the_run_reported_there(tmp_path, eval_every):
    """Rungs at steps 4 and 8. Validation every 3 steps: step 4 is compared with the validation of
    step 3 (objective/val_accuracy at step 4). Every 5 steps: no validation by step 4, so
    objective/running_accuracy at step 4 (ASHA's metric) is compared, and the page says so."""
    from tuning.report import asha_rungs, compare_trials, load_rows, write_report

    vals = {s: 0.3 + 0.01 * s for s in range(eval_every, 13, eval_every)}
    experiment = _asha_experiment(tmp_path / "toy", {
        "fin": (0.90, 0.3333, "finished", 12, {s: 0.9 - v for s, v in vals.items()}),  # falling validation
        "s4": (0.95, 0.3333, "stopped by ASHA", 4, {s: v for s, v in vals.items() if s <= 4}),
        "s8": (0.85, 0.3333, "stopped by ASHA", 8, {s: 0.5 for s in vals if s <= 8}),
    }, eval_every=eval_every)
    # Running accuracy at step 4 (the rung ASHA judged): fin 0.30, s4 0.20, s8 0.10.
    for trial_id, running in {"fin": 0.30, "s4": 0.20, "s8": 0.10}.items():
        path = experiment / "runs" / f"trial-{trial_id}" / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        records[4]["objective/running_accuracy"] = running
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    spec, rows = load_rows(experiment)
    comparison = compare_trials(rows, asha_rungs(experiment, spec, rows))
    assert comparison.step == 4
    markdown = write_report(experiment)["markdown"].read_text()
    assert "Trials are compared at step 4, the latest step every trial reached (an ASHA rung; ASHA's rungs are at steps 4, 8)." in markdown
    if eval_every == 3:
        assert comparison.quantity == "val/greedy_accuracy"
        assert comparison.measured_at == {"fin": 3, "s4": 3, "s8": 3}
        assert [r.trial_id for r in comparison.ranking] == ["fin", "s8", "s4"]  # 0.57, 0.50, 0.33
        assert "at or before step 4 (measured at step 3)" in markdown
        assert _markdown_table(markdown)["s4"]["val acc @ step 4"] == "0.330 (step 3)"
    else:
        assert comparison.quantity == "objective/running_accuracy"
        assert [r.trial_id for r in comparison.ranking] == ["fin", "s4", "s8"]
        assert "the number compared is objective/running_accuracy at step 4" in markdown
        assert "Best at step 4: trial fin, running acc 0.300." in markdown


def test_the_report_takes_the_rungs_from_asha_rungs_json_else_from_the_sweeps_asha_settings(tmp_path):
    from tuning.report import asha_rungs, load_rows

    experiment = _asha_experiment(tmp_path / "toy", {"fin": (0.9, 0.3333, "finished", 12, {4: 0.5})})
    spec, rows = load_rows(experiment)
    assert asha_rungs(experiment, spec, rows) == [4, 8]  # grace period 4, reduction factor 2, 12 steps
    (experiment / "asha_rungs.json").write_text(json.dumps({"rungs": [[[16.0, {}], [6.0, {"fin": 0.1}], [2.5, {}]]], "num_stopped": 0}))
    # What the sweep's scheduler saved: 2.5 is met at step 3; 16, past the 12 steps, never.
    assert asha_rungs(experiment, spec, rows) == [3, 6]
    spec.asha = None
    (experiment / "asha_rungs.json").unlink()
    assert asha_rungs(experiment, spec, rows) == []


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_the_report_page_renders_in_a_browser(tmp_path):
    """Opened in headless Chromium as a person would: no console errors, every plot decoded
    and on screen, the table and the best configuration visible."""
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium here: scripts/setup.sh installs Debian's chromium when run as root")
    from playwright.sync_api import sync_playwright

    from tuning.report import write_report

    page_file = write_report(_fake_experiment(tmp_path / "fake"))["html"]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            images = page.locator("img")
            assert images.count() == 4
            for index in range(images.count()):
                image = images.nth(index)
                image.scroll_into_view_if_needed()
                assert image.is_visible()
                assert page.evaluate("(img) => img.complete && img.naturalWidth > 300", image.element_handle())
            assert page.locator("#trials").is_visible()
            assert page.locator("#trials tbody tr").count() == 4
            assert page.locator("#best-config").is_visible()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 50_000


# --- one real sweep ---------------------------------------------------------------------------


def _ledger(experiment: Path) -> dict[str, dict]:
    path = experiment / "trials.json"
    return {row["trial_id"]: row for row in json.loads(path.read_text())} if path.is_file() else {}


def test_a_sweep_is_interrupted_restored_and_reported(toy_world, tmp_path):
    """Three whole runs under Optuna + ASHA, as the user runs them: a GRPO trial, a MENTOR
    trial with a learning rate that wrecks the policy (ASHA stops it at step 2, against the
    GRPO trial's value at that rung, recorded before the interruption) and one whose data file
    is missing (it fails; the sweep goes on). The sweep is interrupted (Ctrl-C) after its first
    trial ends and the same command resumes it: the finished trial is not rerun, ASHA's rungs
    come back, every trial ends, and nothing is left on the cluster.

    One trial at a time: with two, the order in which they reach the rung decides what ASHA
    does (the first arrival is always kept), and that order is a race on two cores. Trials
    side by side are the slow sweep tests' subject (tests/test_cluster.py, and the bucket
    sweep below)."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny", "storage": str(tmp_path / "sweeps"), "base_config": RECIPE,
        "overrides": {"total_steps": 3, "eval.every_steps": 3, "eval.max_problems": 16, "checkpoint.every_steps": 1,
                      "rollout.prompts_per_step": 8, "optimizer.mini_batch_prompts": 8},
        "parameters": {
            "rollout.guidance_ratio": {"choice": [0.0, 0.3333]},
            "optimizer.lr": {"choice": [1.0e-4, 0.05]},
            "data.train_path": {"choice": ["toy://train", str(tmp_path / "missing.jsonl")]},
        },
        # GRPO first: it reaches ASHA's rung first and is kept there; the wrecked MENTOR trial,
        # arriving second (after the resume) and worse, is stopped.
        "points_to_evaluate": [
            {"rollout.guidance_ratio": 0.0, "optimizer.lr": 1.0e-4, "data.train_path": "toy://train"},
            {"rollout.guidance_ratio": 0.3333, "optimizer.lr": 0.05, "data.train_path": "toy://train"},
            {"rollout.guidance_ratio": 0.3333, "optimizer.lr": 1.0e-4, "data.train_path": str(tmp_path / "missing.jsonl")},
        ],
        "search": {"num_trials": 3, "max_concurrent_trials": 1, "seed": 0},
        "asha": {"metric": "objective/running_accuracy", "mode": "max", "grace_period": 2, "reduction_factor": 2},
    }))
    experiment = tmp_path / "sweeps" / "tiny"
    command = [sys.executable, "-m", "tuning.sweep", "--config", str(sweep_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if any(row["status"] != "running" for row in _ledger(experiment).values()):
            break
        time.sleep(1)
    first.send_signal(signal.SIGINT)
    first_output, _ = first.communicate(timeout=300)
    done_first = {tid: row for tid, row in _ledger(experiment).items() if row["status"] != "running"}
    assert done_first, first_output
    assert len(done_first) < 3, first_output
    assert "sweep interrupted" in first_output, first_output
    frozen = {tid: (Path(row["run_dir"]) / "metrics.jsonl").read_bytes() for tid, row in done_first.items()
              if (Path(row["run_dir"]) / "metrics.jsonl").is_file()}

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "resuming" in output and "sweep done: 3 trials" in output, output
    ledger = _ledger(experiment)
    assert len(ledger) == 3, ledger.keys()
    for tid, content in frozen.items():  # finished before the interruption: not rerun
        assert (Path(ledger[tid]["run_dir"]) / "metrics.jsonl").read_bytes() == content, tid
        assert f"trial {tid} started" not in second.stdout

    by_point = {(row["params"]["rollout.guidance_ratio"], row["params"]["optimizer.lr"], row["params"]["data.train_path"]): row
                for row in ledger.values()}
    grpo = by_point[(0.0, 1.0e-4, "toy://train")]
    missing = by_point[(0.3333, 1.0e-4, str(tmp_path / "missing.jsonl"))]
    wrecked = by_point[(0.3333, 0.05, "toy://train")]
    # At the rung (step 2) ASHA kept the first arrival, GRPO, which ran to the end; the wrecked
    # trial arrived second, in the resumed session, and below the cutoff the restored rung held.
    assert list(json.loads((experiment / "asha_rungs.json").read_text())["rungs"][0][-1][1]) == [grpo["trial_id"], wrecked["trial_id"]]
    assert grpo["status"] == "finished" and grpo["steps"] == 3, grpo
    assert missing["status"] == "failed" and "missing.jsonl" in missing["error"] and "does not exist" in missing["error"]
    assert wrecked["status"] == "stopped by ASHA" and wrecked["steps"] == 2, wrecked
    # Its learners' placement group outlived the stopped trial; the sweep removed it.
    assert wrecked["released_placement_groups"] == 1
    assert all(Path(row["run_dir"]).parent == experiment / "runs" for row in ledger.values())
    assert wrecked["last"]["objective/running_accuracy"] < grpo["last"]["objective/running_accuracy"]
    summary = json.loads((experiment / "sweep_summary.json").read_text())
    assert summary["resumed"] is True
    assert summary["leftovers"] == {"placement_groups": [], "actors": []}

    report = subprocess.run([sys.executable, "-m", "tuning.report", str(experiment)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    markdown = (experiment / "report" / "report.md").read_text()
    assert "stopped by ASHA" in markdown and "failed" in markdown and "(GRPO)" in markdown
    assert (experiment / "report" / "report.html").stat().st_size > 50_000


def test_several_objectives_make_a_multi_objective_optuna_search(tmp_path):
    from tuning.sweep import _searcher

    spec = check_sweep(_sweep(tmp_path, search={"num_trials": 2, "objectives": [
        {"metric": "objective/val_accuracy", "mode": "max"}, {"metric": "rollout/entropy_mean", "mode": "max"}]}))
    searcher = _searcher(spec)
    assert searcher.metric == ["objective/val_accuracy", "rollout/entropy_mean"] and searcher.mode == ["max", "max"]
    single = _searcher(check_sweep(_sweep(tmp_path)))
    assert single.metric == "objective/val_accuracy" and single.mode == "max"


# --- a sweep on shared storage (a URI: an S3 bucket served by moto) ----------------------------


def _use_bucket(monkeypatch, s3_bucket) -> None:
    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("nosuch://bucket/sweeps", r"pyarrow does not know the scheme 'nosuch'"),
        ("s3://no-such-bucket/sweeps", r"the bucket does not exist"),
    ],
)
def test_a_storage_the_sweep_cannot_write_to_is_refused_in_one_line_before_any_trial(tmp_path, s3_bucket, monkeypatch, capsys, location, message):
    import ray

    from tuning.sweep import main, run_sweep

    _use_bucket(monkeypatch, s3_bucket)
    with pytest.raises(ConfigError, match=rf"^test sweep: storage='{location}': cannot .*{message}") as refused:
        run_sweep(_sweep(tmp_path, storage=location))
    assert "\n" not in str(refused.value)
    assert not ray.is_initialized()
    # The command line's --storage replaces the file's, and is refused the same way.
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "t", "base_config": RECIPE, "overrides": {"total_steps": 3, "eval.every_steps": 2},
        "parameters": {"guidance.entropy_quantile": {"uniform": [0.8, 0.99]}}, "asha": {"grace_period": 2},
    }))
    assert main(["--config", str(sweep_file), "--storage", location]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: sweep file {sweep_file}: storage='{location}': "), error
    assert not ray.is_initialized()
    assert not list(tmp_path.glob("*/t")), "nothing local"


def test_a_storage_uri_is_kept_and_a_local_storage_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _sweep(tmp_path, storage="s3://bucket/team/sweeps?region=eu-west-1").experiment == "s3://bucket/team/sweeps/t?region=eu-west-1"
    assert _sweep(tmp_path, storage="relative/sweeps").experiment == str(tmp_path / "relative" / "sweeps" / "t")
    assert load_sweep(DEFAULT_SWEEP, storage="gs://b/p").storage == "gs://b/p"


def test_the_ledger_and_ashas_rungs_are_kept_in_a_bucket(tmp_path, s3_bucket, monkeypatch):
    """What the sweep's driver keeps while trials run, with the experiment folder at a URI: the
    ledger (any copy of it sees the same trials) and ASHA's rungs (a restored scheduler reads
    them back from the bucket)."""
    import pickle
    from types import SimpleNamespace

    from mentor_ray import storage
    from tuning.sweep import SweepLedger, _scheduler

    _use_bucket(monkeypatch, s3_bucket)
    experiment = s3_bucket.uri("ledger", "t")
    ledger = SweepLedger(experiment, total_steps=3)
    fin = SimpleNamespace(trial_id="fin", config={"rollout.guidance_ratio": 0.3333}, last_result={"step": 3, "objective/val_accuracy": 0.5})
    cut = SimpleNamespace(trial_id="cut", config={"rollout.guidance_ratio": 0.0}, last_result={"step": 2, "objective/val_accuracy": 0.25})
    for trial in (fin, cut):
        assert ledger.start(trial).run_dir == storage.join(experiment, "runs", f"trial-{trial.trial_id}")
    # The run that ran to the end wrote its summary into its run folder in the bucket.
    storage.write_text(storage.join(experiment, "runs", "trial-fin", "summary.json"), json.dumps({"steps": 3, "stopped": None}))
    assert ledger.finish(fin, failed=False).status == "finished"
    assert ledger.finish(cut, failed=False).status == "stopped by ASHA"
    again = SweepLedger(experiment, total_steps=3)  # another copy of the callback
    assert {tid: (r.status, r.steps, r.last["objective/val_accuracy"]) for tid, r in again.records.items()} == {
        "fin": ("finished", 3, 0.5), "cut": ("stopped by ASHA", 2, 0.25)}
    assert [row["trial_id"] for row in json.loads(storage.read_text(storage.join(experiment, "trials.json")))] == ["cut", "fin"]

    scheduler = _scheduler(_sweep(tmp_path, overrides={"total_steps": 12, "eval.every_steps": 4}), 12, experiment)
    bracket = scheduler._brackets[0]
    bracket._rungs = [(milestone, {"fin": 0.5} if i == len(bracket._rungs) - 1 else {}) for i, (milestone, _) in enumerate(bracket._rungs)]
    scheduler._persist()
    state_file = storage.join(experiment, "asha_rungs.json")
    saved = json.loads(storage.read_text(state_file))
    assert saved["rungs"][0][-1] == [bracket._rungs[-1][0], {"fin": 0.5}]
    pickled = pickle.dumps(scheduler)
    saved["rungs"][0][-1][1] = {"fin": 0.5, "cut": 0.25}  # what the rungs hold by the time of a restore
    storage.write_text(state_file, json.dumps(saved))
    restored = pickle.loads(pickled)
    assert restored._brackets[0]._rungs[-1][1] == {"fin": 0.5, "cut": 0.25}


def test_the_report_reads_a_sweep_in_a_bucket_without_its_checkpoints_and_writes_the_same_page_there(tmp_path, s3_bucket, monkeypatch, capsys):
    """A sweep folder as a sweep with `storage: s3://...` leaves it (the ledger names run folders
    in the bucket; the base config was in a cluster job's working folder, not here): the report
    of the URI is the page of the same folder read locally, written to <experiment>/report/ in
    the bucket, or to --out; no checkpoint or model is read."""
    from mentor_ray import storage
    from tuning.report import main, write_report

    _use_bucket(monkeypatch, s3_bucket)
    local = _asha_experiment(tmp_path / "toy", {
        "fin": (0.90, 0.3333, "finished", 12, {4: 0.40, 8: 0.60, 12: 0.80}),
        "s4": (0.95, 0.3333, "stopped by ASHA", 4, {4: 0.55}),
        "grpo": (0.95, 0.0, "stopped by ASHA", 4, {4: 0.35}),
        "bad": (0.81, 0.3333, "failed", 0, {}),
    })
    (local / "asha_rungs.json").write_text(json.dumps({"rungs": [[[13.0, {}], [8.0, {"fin": 0.08}], [4.0, {"fin": 0.04, "s4": 0.03}]]], "num_stopped": 2}))
    for name in ("ray_train/checkpoint_000003/model.bin", "final_model/model.safetensors"):
        (local / "runs" / "trial-fin" / name).parent.mkdir(parents=True)
        (local / "runs" / "trial-fin" / name).write_bytes(b"weights")
    shutil.rmtree(local / "runs" / "trial-bad")  # failed before its run made its folder
    expected = write_report(local, tmp_path / "local-report")

    uri = s3_bucket.uri("report-roundtrip", "toy")
    storage.upload_dir(local, uri)
    ledger = json.loads((local / "trials.json").read_text())
    for row in ledger:
        row["run_dir"] = storage.join(uri, "runs", f"trial-{row['trial_id']}")
    storage.write_text(storage.join(uri, "trials.json"), json.dumps(ledger))
    spec = yaml.safe_load((local / "sweep.yaml").read_text())
    spec.update(storage="s3://elsewhere/sweeps", base_config="/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_0/pipelines/recipes/toy_mentor.yaml")
    storage.write_text(storage.join(uri, "sweep.yaml"), yaml.safe_dump(spec))

    reads: list[str] = []
    read_bytes = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda location: reads.append(str(location)) or read_bytes(location))
    monkeypatch.setattr(storage, "download_dir", lambda *a, **k: pytest.fail(f"downloaded a whole folder {a}"))
    assert main([uri]) == 0
    assert capsys.readouterr().out.strip() == f"report: {uri}/report/report.html and {uri}/report/report.md"
    assert reads and not [r for r in reads if "ray_train" in r or "final_model" in r], reads
    assert storage.list_files(storage.join(uri, "report")) == sorted(path.name for path in expected.values())
    for key in ("markdown", "html"):
        assert storage.read_text(storage.join(uri, "report", expected[key].name)) == expected[key].read_text(), key
    assert storage.read_bytes(storage.join(uri, "report", "val_accuracy.png")) == expected["val_accuracy"].read_bytes()
    assert "Trials are compared at step 4" in expected["markdown"].read_text()

    assert main([uri, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").read_text() == expected["markdown"].read_text()
    assert not (local / "report").exists()
    # A sweep folder that is not one says so.
    assert main([s3_bucket.uri("report-roundtrip", "nothing")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_sweep_with_its_storage_in_a_bucket_is_interrupted_resumed_and_reported_from_there(toy_world, tmp_path, s3_bucket, monkeypatch):
    """Two whole runs (1 and 3 steps), `--storage s3://...`: Tune's state, the trials' run folders
    and the sweep's own files go to the bucket, nothing to a local folder; interrupted (Ctrl-C)
    after its first trial ends, the same command resumes it from the bucket; the report is
    written from there into the bucket."""
    from mentor_ray import storage

    _use_bucket(monkeypatch, s3_bucket)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny", "storage": str(tmp_path / "sweeps"), "base_config": RECIPE,
        "overrides": {"eval.every_steps": 1, "eval.max_problems": 32, "checkpoint.every_steps": 1,
                      "rollout.prompts_per_step": 16, "optimizer.mini_batch_prompts": 16},
        # One short trial and one longer: the sweep is interrupted when the short one ends, while
        # the other runs, which the resume continues from its checkpoint in the bucket.
        "parameters": {"rollout.guidance_ratio": {"choice": [0.0, 0.3333]}, "total_steps": {"choice": [1, 3]}},
        "points_to_evaluate": [{"rollout.guidance_ratio": 0.3333, "total_steps": 1}, {"rollout.guidance_ratio": 0.0, "total_steps": 3}],
        "search": {"num_trials": 2, "max_concurrent_trials": 2, "seed": 0},
        "asha": None,
    }))
    root = s3_bucket.uri("sweeps-in-a-bucket")
    experiment = storage.join(root, "tiny")
    command = [sys.executable, "-m", "tuning.sweep", "--config", str(sweep_file), "--storage", root]

    def ledger() -> dict[str, dict]:
        try:
            return {row["trial_id"]: row for row in json.loads(storage.read_text(storage.join(experiment, "trials.json")))}
        except storage.StorageNotFoundError:
            return {}

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if any(row["status"] != "running" for row in ledger().values()):
            break
        time.sleep(1)
    first.send_signal(signal.SIGINT)
    first_output, _ = first.communicate(timeout=300)
    done_first = {tid: row for tid, row in ledger().items() if row["status"] != "running"}
    assert done_first and len(done_first) < 2, first_output
    assert "sweep interrupted" in first_output and f"in {experiment} |" in first_output, first_output
    first_log = storage.read_text(storage.join(experiment, "run.log"))
    frozen = {tid: storage.read_bytes(storage.join(row["run_dir"], "metrics.jsonl")) for tid, row in done_first.items()}

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "resuming" in output and "sweep done: 2 trials" in output, output
    assert f"report: python -m tuning.report {experiment}" in output
    rows = ledger()
    assert {row["status"] for row in rows.values()} == {"finished"}, rows
    for tid, content in frozen.items():  # ended before the interruption: not rerun
        assert storage.read_bytes(storage.join(rows[tid]["run_dir"], "metrics.jsonl")) == content
        assert f"trial {tid} started" not in second.stdout
    for row in rows.values():
        assert row["run_dir"] == storage.join(experiment, "runs", f"trial-{row['trial_id']}")
        stored = storage.list_files(row["run_dir"], recursive=True)
        assert {"config.yaml", "metrics.jsonl", "summary.json", "run.log", "final_model/model.safetensors"} <= set(stored), stored
    top = storage.list_files(experiment)
    assert {"sweep.yaml", "trials.json", "sweep_summary.json", "run.log"} <= set(top), top
    assert any(name.startswith("experiment_state") for name in storage.list_files(storage.join(experiment, "tune"))), "Tune's state"
    assert json.loads(storage.read_text(storage.join(experiment, "sweep_summary.json")))["resumed"] is True
    # The second session's run.log continues the first's.
    assert storage.read_text(storage.join(experiment, "run.log")).startswith(first_log)

    report = subprocess.run([sys.executable, "-m", "tuning.report", experiment], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert report.returncode == 0, report.stderr
    assert "(GRPO)" in storage.read_text(storage.join(experiment, "report", "report.md"))
    # Nothing in a local folder: not the sweep file's storage, not the repository's sweeps/.
    assert not (tmp_path / "sweeps").exists()
    assert not (REPO / "sweeps" / "tiny").exists()



def test_a_trial_builds_its_config_where_the_base_config_file_is_not(tmp_path, monkeypatch):
    """A sweep file given by a relative path (as `ray job submit --working-dir .` runs it): its
    trials run in Tune's trial folders, on any node, yet build their configs from the base
    config the sweep's driver read."""
    import pickle

    monkeypatch.chdir(REPO)
    spec = check_sweep(load_sweep("tuning/sweeps/toy_cluster.yaml", storage="s3://bucket/sweeps"))
    monkeypatch.chdir(tmp_path)
    shipped = pickle.loads(pickle.dumps(spec))  # what Tune hands a trial
    configs = [trial_config(shipped, point, run_root=shipped.experiment + "/runs", run_name="trial-x") for point in full_points(shipped)]
    assert [c.rollout.n_mixed for c in configs] == [0, 4]
    assert all(c.total_steps == 6 and c.placement.engines == {"mentor-ray/node-type": "engines"} for c in configs)
    assert configs[0].placement.learners == {"mentor-ray/node-type": "learners"}
    assert configs[0].logging.run_root == "s3://bucket/sweeps/toy-cluster-sweep/runs"


def test_a_method_added_to_the_registry_is_a_choice_of_the_config_the_cli_and_the_sweep(tmp_path, monkeypatch):
    """One entry in mentor_ray.core.methods.METHODS, nothing else: the config accepts it with its
    rules, `pipelines.train --method` offers it, a sweep may choose it, compare names it."""
    from mentor_ray.config import ConfigError, load_config
    from mentor_ray.core import methods
    from pipelines import compare, train
    from tuning.space import trial_config

    assert "plain" not in methods.METHODS
    entry = methods.MethodEntry("plain", "Plain", makes_mixed_samples=False,
                                advantages=lambda algorithm: methods.MentorGroupAdvantages())
    monkeypatch.setitem(methods.METHODS, "plain", entry)

    config = load_config(None, ["algorithm.method=plain", "rollout.n_mixed=0"])
    assert config.algorithm.method == "plain" and not config.guided and not config.algorithm.uses_expert_traces
    assert methods.method_for(config.algorithm).name == "plain"
    with pytest.raises(ConfigError, match="must be 0 for algorithm.method=plain"):
        load_config(None, ["algorithm.method=plain"])
    assert methods.algorithm_name(config) == "Plain"

    args = train.build_parser().parse_args(["--method", "plain"])
    assert args.method == "plain" and "plain" in train.build_parser().format_help()
    assert train.method_overrides("plain") == ["algorithm.method=plain", "rollout.n_mixed=0"]

    spec = check_sweep(_sweep(tmp_path, parameters={
        "algorithm.method": {"choice": ["mentor", "plain"]},
        "rollout.guidance_ratio": {"choice": [0.0, 1 / 3]},
    }))
    trial = trial_config(spec, {"algorithm.method": "plain", "rollout.guidance_ratio": 1 / 3})
    assert trial.algorithm.method == "plain" and trial.rollout.n_mixed == 0
    assert compare._method_list("mentor,plain") == ["mentor", "plain"]

    # Gone again, it is refused everywhere, by name.
    monkeypatch.delitem(methods.METHODS, "plain")
    with pytest.raises(ConfigError, match=r"algorithm.method='plain': one of \['mentor', 'grpo', 'luffy', 'questa'\]"):
        load_config(None, ["algorithm.method=plain", "rollout.n_mixed=0"])
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--method", "plain"])


def test_a_sweep_can_choose_the_method_and_each_trial_runs_it(tmp_path):
    """`algorithm.method` as a choice: every method passes the sweep's pre-flight, and a trial of
    LUFFY or QuestA makes no mixed samples whatever guidance ratio it drew."""
    from tuning.space import trial_config

    spec = check_sweep(_sweep(tmp_path, parameters={
        "algorithm.method": {"choice": ["mentor", "grpo", "luffy", "questa"]},
        "rollout.guidance_ratio": {"choice": [0.0, 1 / 3]},
    }))
    for method in ("mentor", "grpo", "luffy", "questa"):
        config = trial_config(spec, {"algorithm.method": method, "rollout.guidance_ratio": 1 / 3})
        assert config.algorithm.method == method
        assert (config.rollout.n_mixed > 0) == (method == "mentor")
        assert config.rollout.n_on_policy == 8  # the ratio's N1 whatever the method


# --- each method tuned with the same budget (tuning.methods) ---------------------------------


@pytest.mark.parametrize("world", ["hesitant", "habits"])
def test_the_shipped_methods_sweeps_give_every_method_the_same_budget(world):
    from tuning.methods import load_methods_sweep

    specs = load_methods_sweep(REPO / "tuning" / "sweeps" / f"methods_{world}.yaml")
    assert list(specs) == ["mentor", "luffy", "questa"]
    budgets = set()
    for method, spec in specs.items():
        check_sweep(spec)
        assert spec.overrides["algorithm.method"] == method and spec.asha is None
        assert Path(spec.experiment).parent.name == f"{world}-methods" and Path(spec.experiment).name == method
        budgets.add(repr(({k: v for k, v in spec.overrides.items() if k != "algorithm.method"}, spec.search, spec.base_config)))
        trial = trial_config(spec, full_points(spec)[0])
        assert trial.algorithm.method == method and (trial.rollout.n_mixed > 0) == (method == "mentor")
        assert f"toy://{world}/" in trial.model.policy_path
    assert len(budgets) == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": {"mentor": {"parameters": {QUANTILE: {"uniform": [0.8, 0.99]}}}}}, "at least two method names"),
    ({"methods": {"mentor": {"parameters": {QUANTILE: {"uniform": [0.8, 0.99]}}}, "lufy": {"parameters": {}}}},
     "methods.lufy: not a method"),
    ({"methods": {"mentor": {"parameters": {QUANTILE: {"uniform": [0.8, 0.99]}}},
                  "luffy": {"parameters": {"algorithm.shaping_gamma": {"uniform": [0.1, 0.5]}}, "search": {"num_trials": 9}}}},
     "the budget: overrides, search and asha, is shared"),
    ({"overrides": {"algorithm.method": "luffy"}}, "overrides.algorithm.method: each method's sweep sets it"),
    ({"methods": {"mentor": {"parameters": {QUANTILE: {"uniform": [0.8, 0.99]}}},
                  "questa": {"parameters": {"algorithm.hint_fractoin": {"uniform": [0.25, 0.75]}}}}}, "hint_fractoin"),
])
def test_a_bad_methods_sweep_is_refused_naming_the_method_and_key(tmp_path, change, message):
    from tuning.methods import load_methods_sweep

    data = {"name": "m", "storage": str(tmp_path), "base_config": RECIPE, "overrides": {"total_steps": 3},
            "search": {"num_trials": 2}, "asha": None,
            "methods": {"mentor": {"parameters": {QUANTILE: {"uniform": [0.8, 0.99]}}},
                        "luffy": {"parameters": {"algorithm.shaping_gamma": {"loguniform": [0.01, 1.0]}}}}}
    data.update(change)
    path = tmp_path / "methods.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_methods_sweep(path)


def _method_experiment(root: Path, method: str, key: str, trials: dict, total_steps: int = 10) -> Path:
    """One method's sweep folder as tuning.sweep leaves it: `trials` id -> (value of `key`,
    status, last step, {step: validation accuracy}); validation also at step 0 (0.27)."""
    from mentor_ray.config import load_config, save_config

    root.mkdir(parents=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": method, "storage": str(root.parent), "base_config": RECIPE,
        "overrides": {"total_steps": total_steps, "eval.every_steps": 5, "algorithm.method": method},
        "parameters": {key: {"uniform": [0.01, 0.99]}}, "search": {"num_trials": len(trials)}, "asha": None,
    }))
    ledger = []
    for trial_id, (value, status, last, vals) in trials.items():
        run_dir = root / "runs" / f"trial-{trial_id}"
        run_dir.mkdir(parents=True)
        mixed = [] if method == "mentor" else ["rollout.n_mixed=0"]
        save_config(load_config(RECIPE, [f"algorithm.method={method}", *mixed, f"{key}={value}", f"total_steps={total_steps}"]),
                    run_dir / "config.yaml")
        records = [{"step": 0, "val/greedy_accuracy": 0.27}]
        records += [{"step": s, "rollout/entropy_mean": 0.2, **({"val/greedy_accuracy": vals[s]} if s in vals else {})}
                    for s in range(1, last + 1)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        ledger.append({"trial_id": trial_id, "params": {key: value}, "run_dir": str(run_dir), "status": status,
                       "steps": last, "error": None, "last": {}})
    (root / "trials.json").write_text(json.dumps(ledger))
    return root


def test_the_methods_report_ranks_every_trial_at_one_step_and_names_each_methods_best(tmp_path):
    from tuning.methods import compare_methods, write_methods_report

    root = tmp_path / "w-methods"
    _method_experiment(root / "mentor", "mentor", QUANTILE, {
        "m1": (0.95, "finished", 10, {5: 0.40, 10: 0.50}),
        "m2": (0.85, "finished", 10, {5: 0.45, 10: 0.30}),
        "m3": (0.90, "finished", 10, {5: 0.35, 10: 0.42}),
    })
    # l3 finished after 5 steps, so every trial is compared at step 5, where l1 leads LUFFY
    # (l2 would at step 10) and m2 leads MENTOR (m1 would at step 10).
    _method_experiment(root / "luffy", "luffy", "algorithm.shaping_gamma", {
        "l1": (0.1, "finished", 10, {5: 0.48, 10: 0.44}),
        "l2": (0.5, "finished", 10, {5: 0.41, 10: 0.60}),
        "l3": (0.05, "finished", 5, {5: 0.20}),
    })
    _, comparison, bests = compare_methods(root, ["mentor", "luffy"])
    assert comparison.step == 5
    assert [(b.method, b.best.trial_id, b.best_value) for b in bests] == [("luffy", "l1", 0.48), ("mentor", "m2", 0.45)]
    assert bests[0].median_value == pytest.approx(0.41) and bests[1].median_value == pytest.approx(0.40)
    assert bests[0].searched == {"algorithm.shaping_gamma": 0.1}

    report = write_methods_report(root, ["mentor", "luffy"])
    lines = [line for line in report.read_text().splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| LUFFY | 3 (3) | l1 | 0.480 | 0.410 | 0.440 | 0.270 | algorithm.shaping_gamma=0.100")
    assert lines[2].startswith("| MENTOR | 3 (3) | m2 | 0.450 | 0.400 | 0.300 | 0.270 |")
    assert (report.parent / "best_trials.png").stat().st_size > 5000
    assert (report.parent / "luffy" / "report.md").is_file() and (report.parent / "mentor" / "report.md").is_file()
