"""Judges the habits world's predictions (benchmarks/RESULTS.md, "What the policy takes from the
expert"), written before the runs, against a finished four-way comparison.

    .venv/bin/python benchmarks/habits_predictions.py runs/habits/compare-<stamp>

Reads each seed's comparison.json (pipelines.compare) and prints one table row per prediction
and seed, with whether it holds. The expert's rates are its style's on the 2,000 RL problems
(0.74 checks and 0.73 filler words per response), as the predictions state them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXPERT_USEFUL, EXPERT_FILLER = 0.74, 0.73
OTHERS = ("grpo", "luffy", "questa")


def shares(numbers: dict, method: str, when: str) -> tuple[float, float]:
    """(useful share, filler share) of the expert's rates, `when` = end_of_guidance or final."""
    return numbers[f"{method}_useful_{when}"] / EXPERT_USEFUL, numbers[f"{method}_filler_{when}"] / EXPERT_FILLER


def judged(numbers: dict) -> list[tuple[str, str, bool]]:
    """(prediction, the values judged, holds) for one seed's numbers."""
    rows = []
    for when in ("end_of_guidance", "final"):
        useful, filler = shares(numbers, "mentor", when)
        rows.append((f"1. MENTOR useful share - filler share > 0 ({when})", f"{useful:.3f} - {filler:.3f} = {useful - filler:+.3f}",
                     useful - filler > 0))
    luffy_useful, luffy_filler = shares(numbers, "luffy", "final")
    mentor_useful, mentor_filler = shares(numbers, "mentor", "final")
    rows.append(("2a. LUFFY filler share >= half its useful share", f"{luffy_filler:.3f} vs {luffy_useful / 2:.3f}",
                 luffy_filler >= luffy_useful / 2))
    rows.append(("2b. MENTOR's difference > LUFFY's", f"{mentor_useful - mentor_filler:+.3f} vs {luffy_useful - luffy_filler:+.3f}",
                 mentor_useful - mentor_filler > luffy_useful - luffy_filler))
    for method in ("grpo", "questa"):
        useful, filler = numbers[f"{method}_useful_final"], numbers[f"{method}_filler_final"]
        rows.append((f"3. {method}: useful and filler < 0.05 per response", f"{useful:.3f}, {filler:.3f}", useful < 0.05 and filler < 0.05))
    first, peak, last = (numbers[f"mentor_response_length_{k}"] for k in ("first", "peak", "final"))
    rows.append(("4a. MENTOR's length peaks >= 1.1x step 1", f"{peak:.1f} vs {first:.1f}", peak >= 1.1 * first))
    rows.append(("4b. ... and ends below the peak by >= a quarter of the rise", f"{last:.1f} <= {peak - (peak - first) / 4:.1f}",
                 last <= peak - (peak - first) / 4))
    g_first, g_last = numbers["grpo_response_length_first"], numbers["grpo_response_length_final"]
    rows.append(("4c. GRPO's length within 10% of step 1", f"{g_last:.1f} vs {g_first:.1f}", abs(g_last - g_first) <= 0.1 * g_first))
    mentor = numbers["final_val_accuracy"]
    for method, margin in (("grpo", 0.05), ("luffy", 0.0), ("questa", 0.0)):
        difference = mentor - numbers[f"{method}_final_val_accuracy"]
        rows.append((f"5. final val, MENTOR - {method} {'>= +0.05' if margin else '> 0'}", f"{difference:+.3f}",
                     difference >= margin if margin else difference > 0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compare_dir", type=Path, help="a pipelines.compare output folder with seed-*/comparison.json")
    args = parser.parse_args(argv)
    seeds = {}
    for path in sorted(args.compare_dir.glob("seed-*/comparison.json")):
        numbers = json.loads(path.read_text())
        seeds[numbers["seed"]] = judged(numbers)
    if not seeds:
        parser.error(f"no seed-*/comparison.json under {args.compare_dir}")
    names = [name for name, _, _ in next(iter(seeds.values()))]
    print("| prediction | " + " | ".join(f"seed {s}" for s in seeds) + " | holds on every seed |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for index, name in enumerate(names):
        cells = [f"{seeds[s][index][1]} ({'yes' if seeds[s][index][2] else 'no'})" for s in seeds]
        print(f"| {name} | " + " | ".join(cells) + f" | {'yes' if all(seeds[s][index][2] for s in seeds) else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
