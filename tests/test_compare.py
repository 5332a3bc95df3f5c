"""The three numbers the toy world must show, from the full MENTOR-vs-GRPO comparison.

Slow (two 40-step runs, ~6 minutes on 2 cores): `pytest -m slow tests/test_compare.py`.
The default suite checks the first two on a short run (test_training.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.compare import main as compare_main


@pytest.mark.slow
def test_mentor_vs_grpo_three_numbers(toy_world, tmp_path):
    assert compare_main([f"logging.run_root={tmp_path}"]) == 0
    (report,) = tmp_path.glob("compare-*/comparison.json")
    numbers = json.loads(report.read_text())
    assert numbers["seed"] == 42 and numbers["guided_steps"] == 29
    # Measured (seeds 42 and 43, README): mixed vs on-policy reward 0.69 vs 0.59 and 0.71 vs
    # 0.61, validation 0.32 -> 0.77 / 0.79, entropy 0.064 vs 0.061 / 0.075 vs 0.071. The
    # reward margin asked here is half the measured one: on this world the policy already
    # finishes half its solutions, so on-policy samples earn well too (the hesitant world is
    # where guided exploration pays more, tests/test_compare.py below).
    assert numbers["mixed_reward_while_guided"] >= numbers["on_policy_reward_while_guided"] + 0.05
    assert numbers["final_val_accuracy"] >= numbers["initial_val_accuracy"] + 0.15
    assert numbers["mentor_entropy_end_of_guidance"] > numbers["grpo_entropy_end_of_guidance"]


def test_pass_at_k_of_two_final_models(toy_world, tmp_path):
    """The comparison's exploration numbers, on two stand-in runs (the toy expert and the toy
    policy as final models): pass@k rises with k and the expert, which finishes its
    solutions, beats the policy at k = 1."""
    import ray

    from pipelines.compare import pass_at_k_comparison
    from pipelines.train import DEFAULT_RECIPE

    runs = {}
    for label, model in (("expert", toy_world.expert_dir), ("policy", toy_world.policy_dir)):
        run_dir = tmp_path / label
        run_dir.mkdir()
        (run_dir / "final_model").symlink_to(model)
        (run_dir / "config.yaml").write_text(DEFAULT_RECIPE.read_text())
    runs = {"expert": tmp_path / "expert", "policy": tmp_path / "policy"}
    try:
        numbers = pass_at_k_comparison(runs, tmp_path / "compare", samples=8, limit=48)
    finally:
        ray.shutdown()
    for label in runs:
        curve = [numbers[f"{label}_pass_at_{k}"] for k in (1, 2, 4, 8)]
        assert curve == sorted(curve) and 0.0 <= curve[0] and curve[-1] <= 1.0, (label, curve)
    # Measured: the expert's sampled accuracy is ~0.53, the policy's ~0.31 (test_toy_world).
    assert numbers["expert_pass_at_1"] > numbers["policy_pass_at_1"] + 0.1
    assert (tmp_path / "compare" / "plots" / "pass_at_k.png").stat().st_size > 5000


def _seed_numbers(val_gap: float, pass_gap: float, entropy_ratio: float) -> dict[str, float]:
    return {"final_val_accuracy": 0.5 + val_gap, "grpo_final_val_accuracy": 0.5, "initial_val_accuracy": 0.2,
            "mentor_pass_at_32": 0.9 + pass_gap, "grpo_pass_at_32": 0.9,
            "mentor_entropy_end_of_guidance": 0.1 * entropy_ratio, "grpo_entropy_end_of_guidance": 0.1}


def test_summary_states_an_effect_only_when_it_holds_on_every_seed():
    from pipelines.compare import summarize, summary_markdown

    holds = summarize({1: _seed_numbers(0.08, 0.02, 1.5), 2: _seed_numbers(0.06, 0.01, 1.1), 3: _seed_numbers(0.10, 0.03, 1.3)})
    verdicts = {e["effect"].split(",")[0]: e["holds"] for e in holds["effects"]}
    assert verdicts == {"final val accuracy": True, "pass@32": True, "entropy at the end of guidance": True}
    accuracy = holds["effects"][0]
    assert accuracy["mean"] == pytest.approx(0.08) and accuracy["std"] == pytest.approx(0.02)
    assert holds["spread"]["final_val_accuracy"]["min"] == pytest.approx(0.56)

    # One seed short of +5 points, one tie at pass@32: neither effect is claimed; the entropy
    # claim is on the mean (1.5, 1.1, 1.1: mean 1.23 holds even with two seeds under 1.2).
    mixed = summarize({1: _seed_numbers(0.08, 0.02, 1.5), 2: _seed_numbers(0.04, 0.0, 1.1), 3: _seed_numbers(0.10, 0.03, 1.1)})
    assert [e["holds"] for e in mixed["effects"]] == [False, False, True]
    table = summary_markdown(mixed)
    assert "| seed 1 | seed 2 | seed 3 |" in table and "+0.040" in table and "| every seed | no |" in table

    # pass@k skipped: that effect is not measured, not failed.
    without = summarize({1: {k: v for k, v in _seed_numbers(0.1, 0.1, 2.0).items() if "pass" not in k}})
    assert [e["measured"] for e in without["effects"]] == [True, False, True]
    assert "not measured" in summary_markdown(without)


@pytest.mark.slow
def test_hesitant_world_one_seed_has_each_effect(tmp_path):
    """Seed 42 of the recorded three-seed comparison on the hesitant world (RESULTS.md), as a
    user runs it: every effect the issue asks for has MENTOR's sign, at the size asked for.
    About 5 minutes on 2 cores.

    Measured (seed 42, 2-core AMD EPYC): mixed vs on-policy reward 0.439 vs 0.171, final
    validation 0.250 vs GRPO's 0.039, pass@32 0.586 vs 0.086, entropy at the end of guidance
    0.240 vs 0.135, stopping early 0.547 vs 0.955. Float results differ across CPUs, so the
    margins asked are the issue's targets, well inside what was measured."""
    from pipelines.train import RECIPES

    assert compare_main(["--config", str(RECIPES / "toy_hesitant.yaml"), "--seeds", "42",
                         f"logging.run_root={tmp_path}"]) == 0
    (report,) = tmp_path.glob("compare-*/summary.json")
    numbers = json.loads(report.read_text())["per_seed"]["42"]
    assert numbers["initial_val_accuracy"] < 0.1  # the policy never finishes greedily at first
    assert numbers["mixed_reward_while_guided"] >= numbers["on_policy_reward_while_guided"] + 0.15
    assert numbers["final_val_accuracy"] >= numbers["grpo_final_val_accuracy"] + 0.05
    for k in (1, 8, 32):
        assert numbers[f"mentor_pass_at_{k}"] > numbers[f"grpo_pass_at_{k}"], k
    assert numbers["mentor_entropy_end_of_guidance"] >= 1.2 * numbers["grpo_entropy_end_of_guidance"]
    # The habit behind it: MENTOR's policy learned to finish its working, GRPO's did not.
    assert numbers["mentor_early_stop_rate"] < numbers["grpo_early_stop_rate"] - 0.1
    assert numbers["mentor_sampled_accuracy"] > numbers["grpo_sampled_accuracy"]


def test_plot_seeds_draws_every_seed_of_both_methods(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from mentor_ray.plots import plot_seeds

    labels = []
    original_plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or original_plot(self, *a, **k))

    pairs = {}
    for seed in (1, 2):
        pairs[seed] = {}
        for label in ("mentor", "grpo"):
            run = tmp_path / f"{label}-{seed}"
            run.mkdir()
            rows = [{"step": s, "rollout/entropy_mean": 0.1 + 0.01 * s, **({"val/greedy_accuracy": 0.1 * s} if s % 2 == 0 else {}),
                     **({"habits/on_policy_filler": 0.5} if label == "mentor" else {})}
                    for s in range(5)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            pairs[seed][label] = run
    written = plot_seeds(pairs, tmp_path / "plots")
    # A panel whose metric no run logged is left out; one logged by some runs draws those.
    assert [p.name for p in written] == ["seeds_val_accuracy.png", "seeds_entropy.png", "seeds_habits_filler.png"]
    assert all(p.stat().st_size > 5000 for p in written)
    drawn = ["MENTOR seed 1", "GRPO seed 1", "MENTOR seed 2", "GRPO seed 2"]
    assert labels == drawn + drawn + ["MENTOR seed 1", "MENTOR seed 2"]


# Four methods, three seeds: MENTOR's synthetic numbers beat every baseline's by these margins.
METHODS = ("mentor", "grpo", "luffy", "questa")
BASELINES = {"grpo": (0.50, 0.90, 0.10), "luffy": (0.55, 0.92, 0.12), "questa": (0.45, 0.88, 0.09)}


def _four_method_numbers(seed: int, luffy_accuracy: float | None = None) -> dict[str, float]:
    """MENTOR at final accuracy 0.65 + seed/100, pass@32 0.95, entropy 0.2: ahead of every
    baseline on every effect; `luffy_accuracy` moves LUFFY's final accuracy."""
    numbers = {"initial_val_accuracy": 0.2, "final_val_accuracy": 0.65 + seed / 100, "mentor_final_val_accuracy": 0.65 + seed / 100,
               "mentor_pass_at_32": 0.95, "mentor_entropy_end_of_guidance": 0.2, "mentor_early_stop_rate": 0.1,
               "mixed_reward_while_guided": 0.6, "on_policy_reward_while_guided": 0.4}
    for index, (method, (accuracy, pass_at_32, entropy)) in enumerate(BASELINES.items()):
        numbers.update({f"{method}_final_val_accuracy": accuracy, f"{method}_pass_at_32": pass_at_32,
                        f"{method}_entropy_end_of_guidance": entropy, f"{method}_early_stop_rate": 0.3 + index / 10})
    if luffy_accuracy is not None:
        numbers["luffy_final_val_accuracy"] = luffy_accuracy
    return numbers


def test_summary_judges_mentor_against_every_other_method():
    from pipelines.compare import summarize, summary_markdown

    # Seed 2: LUFFY's final accuracy 0.65, 2 points under MENTOR's 0.67 (short of +5).
    summary = summarize({1: _four_method_numbers(1), 2: _four_method_numbers(2, luffy_accuracy=0.65), 3: _four_method_numbers(3)},
                        METHODS)
    assert summary["methods"] == list(METHODS)
    verdicts = {e["effect"]: e["holds"] for e in summary["effects"]}
    assert verdicts == {
        "final val accuracy, MENTOR - GRPO (>= +0.05)": True,
        "final val accuracy, MENTOR - LUFFY (>= +0.05)": False,
        "final val accuracy, MENTOR - QuestA (>= +0.05)": True,
        "pass@32, MENTOR - GRPO (> 0)": True,
        "pass@32, MENTOR - LUFFY (> 0)": True,
        "pass@32, MENTOR - QuestA (> 0)": True,
        "entropy at the end of guidance, MENTOR / GRPO (mean >= 1.2)": True,
        "entropy at the end of guidance, MENTOR / LUFFY (mean >= 1.2)": True,
        "entropy at the end of guidance, MENTOR / QuestA (mean >= 1.2)": True,
    }
    assert [e["against"] for e in summary["effects"]] == ["grpo", "luffy", "questa"] * 3
    luffy_accuracy = summary["effects"][1]
    assert luffy_accuracy["per_seed"] == pytest.approx({1: 0.11, 2: 0.02, 3: 0.13})
    assert summary["effects"][5]["per_seed"][1] == pytest.approx(0.07)  # pass@32, MENTOR - QuestA
    assert summary["effects"][7]["mean"] == pytest.approx(0.2 / 0.12)  # entropy, MENTOR / LUFFY

    table = summary_markdown(summary)
    for name in ("MENTOR", "GRPO", "LUFFY", "QuestA"):
        assert f"| final val accuracy, {name} |" in table and f"| pass@32, {name} |" in table, name
        assert f"| entropy at end of guidance, {name} |" in table and f"| final model stops early (T=1), {name} |" in table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert "| 0.660 | 0.670 | 0.680 | 0.670 ± 0.010 |" in rows["final val accuracy, MENTOR"]
    assert "| 0.550 | 0.650 | 0.550 | 0.583 ± 0.058 |" in rows["final val accuracy, LUFFY"]
    assert "| 0.880 | 0.880 | 0.880 | 0.880 ± 0.000 |" in rows["pass@32, QuestA"]
    assert "| 0.400 | 0.400 | 0.400 |" in rows["final model stops early (T=1), LUFFY"]
    assert "| +0.110 | +0.020 | +0.130 |" in rows["final val accuracy, MENTOR - LUFFY (>= +0.05)"]
    assert rows["final val accuracy, MENTOR - LUFFY (>= +0.05)"].endswith("| every seed | no |")
    assert rows["final val accuracy, MENTOR - QuestA (>= +0.05)"].endswith("| every seed | yes |")
    # Rows in --methods order, numbers absent from every seed (pass@1, swaps) left out.
    labels = [label for label in rows if label.startswith("final val accuracy, ") and " - " not in label]
    assert labels == ["final val accuracy, MENTOR", "final val accuracy, GRPO", "final val accuracy, LUFFY",
                      "final val accuracy, QuestA"]
    assert "pass@1," not in table and "swaps operands" not in table

    # pass@k skipped: the three pass@32 effects are not measured, the others still judged.
    without = summarize({1: {k: v for k, v in _four_method_numbers(1).items() if "pass" not in k}}, METHODS)
    assert [e["measured"] for e in without["effects"]] == [True] * 3 + [False] * 3 + [True] * 3
    # The two-method form: today's effects, judged on GRPO alone.
    assert [e["effect"] for e in summarize({1: _four_method_numbers(1)})["effects"]] == [
        "final val accuracy, MENTOR - GRPO (>= +0.05)", "pass@32, MENTOR - GRPO (> 0)",
        "entropy at the end of guidance, MENTOR / GRPO (mean >= 1.2)"]


def test_comparison_numbers_of_every_method():
    from pipelines.compare import comparison

    mentor = [{"step": 0, "val/greedy_accuracy": 0.1},
              {"step": 1, "rollout/mixed_samples": 4, "rollout/mixed_reward": 0.6, "rollout/on_policy_reward": 0.2,
               "rollout/entropy_mean": 0.5},
              {"step": 2, "rollout/mixed_samples": 0, "rollout/on_policy_reward": 0.4, "rollout/entropy_mean": 0.7,
               "val/greedy_accuracy": 0.3}]
    others = {method: [{"step": 1, "rollout/entropy_mean": scale * 0.1}, {"step": 2, "rollout/entropy_mean": scale * 0.3,
                                                                          "val/greedy_accuracy": scale / 10}]
              for method, scale in (("grpo", 1), ("luffy", 2), ("questa", 3))}
    numbers = comparison(mentor, others, decay_steps=2)
    assert numbers["final_val_accuracy"] == numbers["mentor_final_val_accuracy"] == 0.3
    assert (numbers["guided_steps"], numbers["end_of_guidance_step"]) == (1, 1)
    for method, scale in (("mentor", None), ("grpo", 1), ("luffy", 2), ("questa", 3)):
        for name in ("final_val_accuracy", "entropy_while_guided", "entropy_end_of_guidance"):
            assert f"{method}_{name}" in numbers, (method, name)
        if scale:
            assert numbers[f"{method}_final_val_accuracy"] == pytest.approx(scale / 10)
            assert numbers[f"{method}_entropy_while_guided"] == pytest.approx(scale * 0.1)  # step 1 only
    # The two-method form: a bare history is GRPO's.
    assert comparison(mentor, others["grpo"], decay_steps=2) == comparison(mentor, {"grpo": others["grpo"]}, decay_steps=2)


def test_method_overrides_and_names():
    from mentor_ray.core.methods import METHODS
    from pipelines.compare import method_overrides

    assert {name: entry.display_name for name, entry in METHODS.items()} == {
        "mentor": "MENTOR", "grpo": "GRPO", "luffy": "LUFFY", "questa": "QuestA"}
    assert method_overrides("mentor") == ["algorithm.method=mentor"]  # a recipe naming another method cannot turn it
    for method in ("grpo", "luffy", "questa"):
        assert sorted(method_overrides(method)) == [f"algorithm.method={method}", "rollout.n_mixed=0"]


@pytest.mark.parametrize(("methods", "complaint"), [
    ("mentor,ppo", "'ppo' is not a method"),
    ("mentor,grpo,mentor", "a method is repeated"),
    ("grpo,luffy", "mentor is missing"),
    ("mentor,", "'' is not a method"),
])
def test_bad_methods_are_argparse_errors(methods, complaint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--methods", methods])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --methods" in error and complaint in error and repr(methods) in error, error


def test_runs_name_their_methods(capsys):
    from pipelines.compare import _run_locations

    assert _run_locations(["runs/a", "s3://bucket/runs/b"]) == {"mentor": "runs/a", "grpo": "s3://bucket/runs/b"}
    assert _run_locations(["mentor=runs/a", "luffy=s3://b/x=1", "questa=runs/q"]) == {
        "mentor": "runs/a", "luffy": "s3://b/x=1", "questa": "runs/q"}
    for items, complaint in ((["runs/a"], "MENTOR_RUN GRPO_RUN"), (["runs/a", "runs/b", "runs/c"], "MENTOR_RUN GRPO_RUN"),
                             (["mentor=runs/a", "runs/b"], "name every run's method"),
                             (["mentor=runs/a", "ppo=runs/b"], "'ppo' is not a method"),
                             (["grpo=runs/a", "luffy=runs/b"], "mentor is missing")):
        with pytest.raises(SystemExit) as exit_info:
            compare_main(["--runs", *items])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and "--runs: " in error and complaint in error, (items, error)
    with pytest.raises(SystemExit):
        compare_main(["--methods", "mentor,luffy", "--runs", "runs/a", "runs/b"])
    assert "--runs names its methods" in capsys.readouterr().err


def test_every_method_trains_on_every_seed(tmp_path, monkeypatch):
    """The orchestration without training: each seed's runs, one per method with its overrides,
    in its own folder; the summary judges MENTOR against each baseline."""
    from types import SimpleNamespace

    from pipelines import compare

    trained = []

    def fake_training(config, **_):
        run_dir = Path(config.logging.run_root) / config.logging.run_name
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "val/greedy_accuracy": 0.2, "rollout/entropy_mean": 0.1}) + "\n")
        trained.append((config.seed, config.logging.run_name, config.algorithm.method, config.rollout.n_mixed,
                        run_dir.parent.name))
        return SimpleNamespace(run_dir=str(run_dir))

    def fake_seed_numbers(runs, root, config, pass_at_k_samples):
        assert list(runs) == list(METHODS) and config.algorithm.method == "mentor" and config.rollout.n_mixed > 0
        assert all(runs[m].name == m and runs[m].parent == root == tmp_path.glob("compare-*").__next__() / f"seed-{config.seed}"
                   for m in METHODS)
        return _four_method_numbers(config.seed)

    monkeypatch.setattr(compare, "run_training", fake_training)
    monkeypatch.setattr(compare, "seed_numbers", fake_seed_numbers)
    assert compare_main(["--methods", ",".join(METHODS), "--seeds", "1,2", f"logging.run_root={tmp_path}"]) == 0
    mentor_n_mixed = trained[0][3]
    assert trained == [(seed, m, m, mentor_n_mixed if m == "mentor" else 0, f"seed-{seed}") for seed in (1, 2) for m in METHODS]
    (summary_file,) = tmp_path.glob("compare-*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["methods"] == list(METHODS) and len(summary["effects"]) == 9
    assert all(e["holds"] for e in summary["effects"])
    assert (summary_file.parent / "plots" / "seeds_val_accuracy.png").is_file()
    assert (summary_file.parent / "seed-2" / "comparison.json").is_file()


def test_a_method_the_recipe_cannot_run_stops_before_any_training(tmp_path, monkeypatch, capsys):
    from pipelines import compare

    monkeypatch.setattr(compare, "run_training", lambda config, **_: pytest.fail("trained"))
    # Without an expert MENTOR runs (as plain GRPO), LUFFY cannot: it is refused before MENTOR trains.
    assert compare_main(["--methods", "mentor,luffy", f"logging.run_root={tmp_path}", "rollout.n_mixed=0",
                         "model.expert_path=null"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "must name the expert for algorithm.method=luffy" in error, error


def test_plot_seeds_draws_every_method_of_every_seed(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from mentor_ray.plots import plot_seeds

    drawn = []
    original_plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: drawn.append((k.get("label"), a[2])) or original_plot(self, *a, **k))
    pairs = {}
    for seed in (1, 2, 3):
        pairs[seed] = {}
        for method in METHODS:
            run = tmp_path / f"{method}-{seed}"
            run.mkdir()
            rows = [{"step": s, "rollout/entropy_mean": 0.1 * s, "val/greedy_accuracy": 0.1 * s} for s in range(3)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            pairs[seed][method] = run
    assert all(p.stat().st_size > 5000 for p in plot_seeds(pairs, tmp_path / "plots"))
    styles = dict(zip(METHODS, ("-", "--", ":", "-.")))
    expected = [(f"{m.upper()} seed {seed}", styles[m]) for seed in (1, 2, 3) for m in METHODS]
    assert drawn == expected + expected


def test_habits_length_and_expert_signal_per_method_reach_the_summary():
    """A method's habits (last 3 steps and at the end of guidance), response length (first,
    largest, last) and expert signal while guided, from its metrics, into the summary table."""
    from pipelines.compare import comparison, summarize, summary_markdown

    def history(useful, filler, lengths, signal=None):
        return [{"step": s, "habits/on_policy_useful": useful(s), "habits/on_policy_filler": filler(s),
                 "rollout/on_policy_response_length": lengths[s - 1], "val/greedy_accuracy": 0.1,
                 **({"signal/expert_tokens_per_prompt": signal, "signal/expert_advantage_mass_per_prompt": signal / 10}
                    if signal and s <= 4 else {})} for s in range(1, 9)]

    mentor = history(lambda s: 0.1 * s, lambda s: 0.0, [20, 30, 40, 35, 30, 25, 22, 21], signal=12.0)
    luffy = history(lambda s: 1.0, lambda s: 0.5 if s > 4 else 0.0, [20] * 8, signal=30.0)
    numbers = comparison(mentor, {"luffy": luffy}, decay_steps=5)  # guided to step 4
    assert numbers["mentor_useful_final"] == pytest.approx(0.7)  # steps 6-8
    assert numbers["mentor_useful_end_of_guidance"] == pytest.approx(0.3)  # steps 2-4
    assert numbers["luffy_filler_final"] == 0.5 and numbers["luffy_filler_end_of_guidance"] == 0.0
    assert (numbers["mentor_response_length_first"], numbers["mentor_response_length_peak"]) == (20, 40)
    assert numbers["mentor_response_length_final"] == pytest.approx(68 / 3)
    assert numbers["mentor_expert_tokens_per_prompt_while_guided"] == 12.0
    assert numbers["luffy_expert_advantage_mass_per_prompt_while_guided"] == pytest.approx(3.0)
    table = summary_markdown(summarize({42: numbers}, ["mentor", "luffy"]))
    assert "| useful habits (check, verify) per response, last steps, MENTOR | 0.700 |" in table
    assert "| filler (okay, wait) per response, last steps, LUFFY | 0.500 |" in table
    assert "| expert tokens trained on per prompt, while guided, LUFFY | 30.000 |" in table
