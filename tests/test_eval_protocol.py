"""The evaluation protocol's estimators against hand-computed values, and the cluster file
against the schema inside the installed Ray and against the recipes' needs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml

from mentor_ray.pass_at_k import avg_at_k, mean_pass_at_k, pass_at_k

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),
        (10, 10, 5, 1.0),
        (10, 3, 1, 0.3),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (32, 1, 32, 1.0),
        (32, 4, 8, 1 - math.comb(28, 8) / math.comb(32, 8)),
        (1000, 7, 100, 1 - math.comb(993, 100) / math.comb(1000, 100)),
    ],
)
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_chance_that_a_k_subset_holds_a_correct_sample():
    # Exhaustive over every k-subset of 7 samples with 2 correct.
    samples = [1, 1, 0, 0, 0, 0, 0]
    for k in range(1, 8):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(7, 2, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_avg_and_mean_pass_at_k_on_a_fixed_set():
    counts = [(32, 0), (32, 8), (32, 32), (32, 16)]
    assert avg_at_k(counts) == pytest.approx((0 + 0.25 + 1 + 0.5) / 4)
    assert mean_pass_at_k(counts, 1) == pytest.approx(avg_at_k(counts))  # pass@1 = avg@n
    assert mean_pass_at_k(counts, 32) == pytest.approx(0.75)
    greedy = [(1, 1), (1, 0), (1, 1)]
    assert avg_at_k(greedy) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="need 1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_at_k(4, 5, 1)


def test_cluster_file_validates_against_rays_schema_and_holds_the_recipes():
    from ray.autoscaler._private.util import prepare_config, validate_config

    from mentor_ray.config import load_config
    from pipelines.resources import run_needs

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(cluster))
    broken = yaml.safe_load((REPO / "cluster.yaml").read_text())
    broken["available_node_types"]["head"]["resource"] = {"CPU": 1}  # a typo the schema catches
    with pytest.raises(Exception, match="resource"):
        validate_config(prepare_config(broken))
    # GPU node types for the recipes (8 x A100-80GB, 8 x H100), images of the pinned Ray version.
    instance_types = {t["node_config"]["InstanceType"] for t in cluster["available_node_types"].values()}
    assert {"p4de.24xlarge", "p5.48xlarge"} <= instance_types
    assert all(image.startswith("rayproject/ray:2.60.") for image in (cluster["docker"]["head_image"], cluster["docker"]["worker_image"]))
    assert '"ray[default,train,tune,data]>=2.60,<2.61"' in (REPO / "pyproject.toml").read_text()
    # The dashboard (job submission) must not listen on the network.
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    gpus_per_node = max(t["resources"].get("GPU", 0) for t in cluster["available_node_types"].values())
    max_gpus = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 1) for t in cluster["available_node_types"].values())
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(recipe)
        needs = run_needs(config)
        assert needs.gpus <= max_gpus, recipe.name
        assert config.scaling.gpus_per_engine <= gpus_per_node, recipe.name  # an engine's tensor-parallel group fits a node
