"""``python -m mentor_ray.toy_world [--world NAME] [--seed N] [--force] [--ship] [--cache-root DIR] [--habits MODEL_DIR ...]``

Shows a toy world (the shipped one when its recipe was shipped), or builds it: ``--force``
rebuilds into the cache (every model trained again), ``--ship`` copies the build into the
package (``mentor_ray/toy_world/shipped`` for the default world, ``shipped-<name>`` for a named
one) with a fresh manifest. With ``--habits``, it also samples
each model folder (the toy policy, the expert, a run's ``final_model``) on the eval problems and prints its habits:
accuracy, how often it stops a step early, and how often it swaps operands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dataclasses

from mentor_ray.toy_world.build import (
    SHIPPED_PREFIX,
    SHIPPED_ROOT,
    TOY_WORLDS,
    build_toy_world,
    default_cache_root,
    ship_world,
    shipped_roots,
    world_recipe,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mentor_ray.toy_world", description=__doc__)
    parser.add_argument("--world", default="default", choices=sorted(TOY_WORLDS), help="which world (default: default)")
    parser.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if shipped or cached")
    parser.add_argument("--ship", action="store_true", help="copy the (re)built default world into the package")
    parser.add_argument(
        "--cache-root", default=None, help=f"cache folder (default $MENTOR_RAY_CACHE or {default_cache_root()})"
    )
    parser.add_argument("--habits", nargs="+", default=[], metavar="MODEL_DIR", help="model folders to sample and describe")
    args = parser.parse_args(argv)
    if args.ship and args.seed != 0:
        parser.error("--ship ships a world at its own seed (0)")
    recipe = dataclasses.replace(world_recipe(args.world), seed=args.seed)
    world = build_toy_world(cache_root=args.cache_root, recipe=recipe, force=args.force)
    if args.ship:
        if world.root in shipped_roots():
            parser.error(f"{world.root} is already the shipped build of this recipe; --force --ship rebuilds and ships it")
        destination = SHIPPED_ROOT if args.world == "default" else SHIPPED_ROOT.with_name(SHIPPED_PREFIX + args.world)
        print(f"shipped to {ship_world(world, destination)}")
    if args.habits:
        print_habits(args.habits, world.eval_path)
        return
    summary = {name: {k: v for k, v in world.report[name].items()} for name in ("expert", "policy")}
    print(json.dumps({"root": str(world.root), "build_seconds": world.report["build_seconds"], **summary}, indent=2))


def print_habits(model_dirs: list[str], eval_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_ray.toy_world.evaluate import sampled_habits

    problems = [json.loads(line) for line in Path(eval_path).read_text().splitlines()]
    print(f"{'model':<60} {'accuracy':>8} {'stops early':>11} {'swapped':>8} {'responses':>9}")
    for folder in model_dirs:
        model = AutoModelForCausalLM.from_pretrained(folder)
        habits = sampled_habits(model, AutoTokenizer.from_pretrained(folder), problems)
        print(f"{folder:<60} {habits.accuracy:>8.3f} {habits.early_stop_rate:>11.3f} {habits.swapped_share:>8.3f} {habits.responses:>9}")


if __name__ == "__main__":
    main()
