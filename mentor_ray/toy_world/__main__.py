"""``python -m mentor_ray.toy_world [--seed N] [--force] [--cache-root DIR]``: build or show the toy world."""

from __future__ import annotations

import argparse
import json

from mentor_ray.toy_world.build import build_toy_world, default_cache_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mentor_ray.toy_world", description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument(
        "--cache-root", default=None, help=f"cache folder (default $MENTOR_RAY_CACHE or {default_cache_root()})"
    )
    args = parser.parse_args(argv)
    world = build_toy_world(cache_root=args.cache_root, seed=args.seed, force=args.force)
    summary = {name: {k: v for k, v in world.report[name].items()} for name in ("expert", "policy")}
    print(json.dumps({"root": str(world.root), "build_seconds": world.report["build_seconds"], **summary}, indent=2))


if __name__ == "__main__":
    main()
