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


def test_the_report_counts_each_step_once_and_names_the_best_configuration(tmp_path):
    from tuning.report import write_report

    experiment = _fake_experiment(tmp_path / "fake")
    files = write_report(experiment)
    markdown = files["markdown"].read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in markdown.splitlines() if line.startswith("| ") and "trial" not in line}
    # columns: trial, quantile, ratio, final val, best val, entropy, steps, status, error
    assert rows["a"][3:5] == ["0.700", "0.700"]
    assert rows["b (GRPO)"][3] == "0.450"
    assert rows["c"][4] == "0.600"  # the stale 0.99 of the re-run step is not counted
    assert rows["d"][7] == "failed" and "file does not exist" in rows["d"][8]
    best = yaml.safe_load(markdown.split("```yaml\n")[1].split("```")[0])
    assert best == {"guidance": {"entropy_quantile": 0.9}, "rollout": {"n_on_policy": 8, "n_mixed": 4}}
    for name in ("val_accuracy", "entropy", "importance", "accuracy_vs_parameters"):
        assert files[name].stat().st_size > 5000, name


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
    """Four whole runs under Optuna + ASHA, two at a time, as the user runs them: a GRPO
    trial, a MENTOR trial, one whose data file is missing (it fails; the sweep goes on) and
    one with a learning rate that wrecks the policy (ASHA stops it at step 2). The sweep is
    interrupted (Ctrl-C) after its first trial ends and the same command resumes it: the
    finished trials are not rerun, every trial ends, and nothing is left on the cluster."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny", "storage": str(tmp_path / "sweeps"), "base_config": RECIPE,
        "overrides": {"total_steps": 3, "eval.every_steps": 3, "eval.max_problems": 32, "checkpoint.every_steps": 1,
                      "rollout.prompts_per_step": 16, "optimizer.mini_batch_prompts": 16},
        "parameters": {
            "rollout.guidance_ratio": {"choice": [0.0, 0.3333]},
            "optimizer.lr": {"choice": [1.0e-4, 0.05]},
            "data.train_path": {"choice": ["toy://train", str(tmp_path / "missing.jsonl")]},
        },
        "points_to_evaluate": [
            {"rollout.guidance_ratio": 0.3333, "optimizer.lr": 1.0e-4, "data.train_path": "toy://train"},
            {"rollout.guidance_ratio": 0.0, "optimizer.lr": 1.0e-4, "data.train_path": "toy://train"},
            {"rollout.guidance_ratio": 0.3333, "optimizer.lr": 1.0e-4, "data.train_path": str(tmp_path / "missing.jsonl")},
            {"rollout.guidance_ratio": 0.3333, "optimizer.lr": 0.05, "data.train_path": "toy://train"},
        ],
        "search": {"num_trials": 4, "max_concurrent_trials": 2, "seed": 0},
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
    assert len(done_first) < 4, first_output
    assert "sweep interrupted" in first_output, first_output
    frozen = {tid: (Path(row["run_dir"]) / "metrics.jsonl").read_bytes() for tid, row in done_first.items()
              if (Path(row["run_dir"]) / "metrics.jsonl").is_file()}

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "resuming" in output and "sweep done: 4 trials" in output, output
    ledger = _ledger(experiment)
    assert len(ledger) == 4, ledger.keys()
    for tid, content in frozen.items():  # finished before the interruption: not rerun
        assert (Path(ledger[tid]["run_dir"]) / "metrics.jsonl").read_bytes() == content, tid
        assert f"trial {tid} started" not in second.stdout

    by_point = {(row["params"]["rollout.guidance_ratio"], row["params"]["optimizer.lr"], row["params"]["data.train_path"]): row
                for row in ledger.values()}
    mentor = by_point[(0.3333, 1.0e-4, "toy://train")]
    grpo = by_point[(0.0, 1.0e-4, "toy://train")]
    missing = by_point[(0.3333, 1.0e-4, str(tmp_path / "missing.jsonl"))]
    wrecked = by_point[(0.3333, 0.05, "toy://train")]
    # At the rung (step 2) ASHA keeps the first arrival and whoever beats the cutoff: of the two
    # healthy trials at least one runs to the end; the wrecked one is below any cutoff.
    assert {mentor["status"], grpo["status"]} <= {"finished", "stopped by ASHA"}
    assert "finished" in {mentor["status"], grpo["status"]}
    for row in (mentor, grpo):
        assert row["steps"] == (3 if row["status"] == "finished" else 2), row
    assert missing["status"] == "failed" and "missing.jsonl" in missing["error"] and "does not exist" in missing["error"]
    assert wrecked["status"] == "stopped by ASHA" and wrecked["steps"] == 2, wrecked
    # Its learners' placement group outlived the stopped trial; the sweep removed it.
    assert wrecked["released_placement_groups"] == 1
    assert all(Path(row["run_dir"]).parent == experiment / "runs" for row in ledger.values())
    assert wrecked["last"]["objective/running_accuracy"] < min(mentor["last"]["objective/running_accuracy"], grpo["last"]["objective/running_accuracy"])
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
