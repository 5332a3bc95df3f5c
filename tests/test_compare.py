"""The three numbers the toy world must show, from the full MENTOR-vs-GRPO comparison.

Slow (two 40-step runs, ~6 minutes on 2 cores): `pytest -m slow tests/test_compare.py`.
The default suite checks the first two on a short run (test_training.py).
"""

from __future__ import annotations

import json

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
            rows = [{"step": s, "rollout/entropy_mean": 0.1 + 0.01 * s, **({"val/greedy_accuracy": 0.1 * s} if s % 2 == 0 else {})}
                    for s in range(5)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            pairs[seed][label] = run
    written = plot_seeds(pairs, tmp_path / "plots")
    assert [p.name for p in written] == ["seeds_val_accuracy.png", "seeds_entropy.png"]
    assert all(p.stat().st_size > 5000 for p in written)
    drawn = ["MENTOR seed 1", "GRPO seed 1", "MENTOR seed 2", "GRPO seed 2"]
    assert labels == drawn + drawn  # both panels
