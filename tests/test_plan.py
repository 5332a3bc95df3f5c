"""The capacity plan (pipelines/plan.py, mentor_ray/capacity.py, mentor_ray/model_shapes.py) and
the input problems refused before any engine starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from mentor_ray.capacity import GIB, engine_memory, learner_activation_bytes, zero_model_state_bytes
from mentor_ray.config import ConfigError, load_config
from mentor_ray.model_shapes import model_shape, shipped_shapes
from pipelines import plan

REPO = Path(__file__).resolve().parents[1]
PAPER_RECIPES = ["configs/qwen2.5-3b.yaml", "configs/qwen2.5-7b.yaml", "configs/llama3.1-8b.yaml"]


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-7B", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-3B"])
def test_parameter_counts_equal_the_transformers_model(name):
    """The shipped facts and the counting rule, against the model transformers builds from them
    (on the meta device: no memory)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = shipped_shapes()[name]
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if shape.family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_class(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied_embeddings,
        max_position_embeddings=shape.max_positions,
    )
    with torch.device("meta"):
        model = model_class(config)
    counted = sum(p.numel() for p in model.parameters())  # tied weights appear once
    assert shape.parameters() == counted
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert shape.layer_parameters() == layer
    # Published sizes: 7.62B, 8.03B, 3.09B.
    assert round(shape.parameters() / 1e9, 2) == {"Qwen/Qwen2.5-7B": 7.62, "meta-llama/Llama-3.1-8B": 8.03, "Qwen/Qwen2.5-3B": 3.09}[name]


def test_a_local_model_folder_is_read_from_its_config_json(toy_world):
    from transformers import AutoModelForCausalLM

    shape = model_shape("toy://policy", "model.policy_path")
    model = AutoModelForCausalLM.from_pretrained(toy_world.policy_dir)
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    assert shape.max_positions == 512 and shape.tied_embeddings
    with pytest.raises(ConfigError, match=r"model.policy_path='nobody/NoModel-1B': no config.json there and not a shipped"):
        model_shape("nobody/NoModel-1B", "model.policy_path")


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-7B", "meta-llama/Llama-3.1-8B"])
@pytest.mark.parametrize("world", [4, 8])
def test_model_states_equal_deepspeeds_estimators(name, world):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = shipped_shapes()[name]
    params, largest = shape.parameters(), shape.largest_layer_parameters()

    def ours(stage, **offload):
        return zero_model_state_bytes(params, largest, stage, world, half_precision=True, **offload)

    # ZeRO-2: GPU bytes, without and with the optimizer offloaded.
    assert ours(2) == estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=world, cpu_offload=False)[1]
    assert ours(2, offload_optimizer=True) == estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=world, cpu_offload=True)[1]
    # ZeRO-3: none, optimizer, optimizer and parameters offloaded.
    assert ours(3) == estimate_zero3_model_states_mem_needs(params, largest, num_gpus_per_node=world, cpu_offload=False)[1]
    assert ours(3, offload_optimizer=True) == estimate_zero3_model_states_mem_needs(
        params, largest, num_gpus_per_node=world, cpu_offload=True, cpu_offload_params=False)[1]
    assert ours(3, offload_optimizer=True, offload_params=True) == estimate_zero3_model_states_mem_needs(
        params, largest, num_gpus_per_node=world, cpu_offload=True, cpu_offload_params=True)[1]


def test_kv_cache_bytes_by_hand():
    qwen7, llama8 = shipped_shapes()["Qwen/Qwen2.5-7B"], shipped_shapes()["meta-llama/Llama-3.1-8B"]
    # K and V x layers x KV heads x head width x 2 bytes (bf16).
    assert qwen7.kv_bytes_per_token(2) == 2 * 28 * 4 * 128 * 2 == 57_344
    assert llama8.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131_072
    # A mixed engine holds both caches; with tensor parallelism 2 each device holds half.
    mixed = engine_memory([qwen7, qwen7], device_bytes=80 * GIB, fraction=0.85, value_bytes=2, tensor_parallel=2,
                          max_model_len=9216, max_num_seqs=256, sequences_in_flight=512)
    assert mixed.kv_per_sequence == 2 * 57_344 * 9216 // 2
    assert mixed.weights == 2 * qwen7.parameters() * 2 // 2
    assert mixed.sequences_in_flight == 256  # vLLM's max_num_seqs bounds what is in flight
    assert mixed.full_length_sequences == (mixed.budget - mixed.weights - mixed.working) // mixed.kv_per_sequence


# Measured on an NVIDIA H200 (benchmarks/RESULTS.md, "The capacity plan"): bytes per token of
# growth between two response lengths of one forward + backward through the chunked scorer.
H200_GROWTH_PER_TOKEN = [
    # (shape: layers, hidden, intermediate; gradient checkpointing; measured bytes per token)
    ((24, 896, 4864), True, 0.0503 * 2**20),  # Qwen2.5-0.5B's shape, 4 x 1,152 -> 4 x 8,320 tokens
    ((4, 3584, 18944), True, 150.0 * 1024),  # Qwen2.5-7B's width, 4 layers
    ((4, 4096, 14336), True, 148.0 * 1024),  # Llama-3.1-8B's width, 4 layers
    ((2, 3584, 18944), False, 476.0 * 1024),
    ((4, 3584, 18944), False, 917.0 * 1024),
    ((2, 4096, 14336), False, 433.0 * 1024),
]


@pytest.mark.parametrize(("dims", "checkpointing", "measured"), H200_GROWTH_PER_TOKEN)
def test_activation_estimate_against_the_h200_measurements(dims, checkpointing, measured):
    """Without checkpointing the estimate matches the measured growth within 10%; with it the
    estimate is an upper bound within 2.2x."""
    from mentor_ray.model_shapes import ModelShape

    layers, hidden, intermediate = dims
    shape = ModelShape("m", "qwen2", layers, hidden, intermediate, 8, 2, 152064, False, 32768)
    per_token = (learner_activation_bytes(shape, 20_000, value_bytes=2, checkpointing=checkpointing, logit_chunk_tokens=1024,
                                          scored_tokens=10_000)
                 - learner_activation_bytes(shape, 10_000, value_bytes=2, checkpointing=checkpointing, logit_chunk_tokens=1024,
                                            scored_tokens=5_000)) / 10_000
    if checkpointing:
        assert measured <= per_token <= 2.2 * measured
    else:
        assert per_token == pytest.approx(measured, rel=0.10)


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_the_paper_recipes_fit_cluster_yaml(recipe, capsys):
    assert plan.main(["--config", str(REPO / recipe)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("fits")
    for role in ("learners", "policy engines", "mixed engines", "graders"):
        assert f"| {role} |" in out
    assert "weight sync:" in out and "the recipe needs 8" in out


def test_the_collective_transfer_buckets_are_counted_on_both_sides(capsys):
    """sync.transport=collective: the learners and every engine hold two buckets; with 256 MiB
    buckets the largest is Qwen2.5-7B's bf16 embedding, 152064 x 3584 x 2 bytes, alone."""
    recipe = str(REPO / "configs/qwen2.5-7b.yaml")
    by_store = plan.plan_run(load_config(recipe, ["sync.transport=object_store"]), plan.default_cluster(load_config(recipe)))
    by_broadcast = plan.plan_run(load_config(recipe, ["sync.transport=collective", "sync.bucket_mb=256"]),
                                 plan.default_cluster(load_config(recipe)))
    embedding = 152064 * 3584 * 2
    held = 2 * embedding
    assert by_broadcast.transfer.bucket == embedding and by_broadcast.transfer.held_per_side == held
    assert by_store.transfer is None
    for store_role, broadcast_role in zip(by_store.roles, by_broadcast.roles):
        extra = held if store_role.role in ("learners", "policy engines", "mixed engines") else 0
        assert broadcast_role.memory - store_role.memory == extra, store_role.role
    assert plan.main(["--config", recipe, "sync.transport=collective"]) == 0
    out = capsys.readouterr().out
    assert "by NCCL broadcast (sync.transport=collective): sent once to 4 engines in 57 buckets of at most 1040 MiB" in out
    assert "weight-transfer buckets 2.03" in out
    assert plan.main(["--config", recipe, "sync.transport=object_store"]) == 0
    assert "by object store (sync.transport=object_store): put once, pulled by each of 4 engines" in capsys.readouterr().out


def test_a_recipe_that_does_not_fit_names_the_role_and_by_how_much(capsys):
    code = plan.main(["--config", str(REPO / "configs/qwen2.5-7b.yaml"), "optimizer.micro_batch_samples=8"])
    out = capsys.readouterr().out
    assert code == 2
    assert "DOES NOT FIT: learners do not fit: 80.3 GiB per GPU needed" in out and "0.6 GiB over" in out


def test_too_few_gpus_and_unknown_gpu_kinds(tmp_path, capsys):
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cluster["max_workers"] = 0  # the head alone
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(cluster))
    assert plan.main(["--config", str(REPO / "configs/qwen2.5-3b.yaml"), "--cluster", str(small)]) == 2
    out = capsys.readouterr().out
    assert "the recipe needs 8 GPUs" in out and "offers 0" in out and "8 short" in out
    cluster["max_workers"] = 2
    for node_type in cluster["available_node_types"].values():
        node_type.get("labels", {}).pop("mentor-ray/gpu", None)
    unlabelled = tmp_path / "unlabelled.yaml"
    unlabelled.write_text(yaml.safe_dump(cluster))
    assert plan.main(["--config", str(REPO / "configs/qwen2.5-3b.yaml"), "--cluster", str(unlabelled)]) == 2
    assert "no `mentor-ray/gpu` label" in capsys.readouterr().err
    assert plan.main(["--config", str(REPO / "configs/qwen2.5-3b.yaml"), "--cluster", str(unlabelled), "--gpu-memory-gib", "24"]) == 2
    assert "learners do not fit" in capsys.readouterr().out


def test_training_refuses_a_recipe_that_does_not_fit_before_ray_starts(tmp_path, capsys):
    import ray

    from pipelines.train import main

    assert not ray.is_initialized()
    code = main(["--config", str(REPO / "configs/qwen2.5-7b.yaml"), "optimizer.gradient_checkpointing=false",
                 f"logging.run_root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: learners do not fit:"), err
    assert not ray.is_initialized() and not any(tmp_path.iterdir())


def _one_line_error(capsys, code: int, expected_code: int, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == expected_code, captured
    assert "\n" not in err and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_input_problems_are_one_line_errors_before_any_engine_starts(tmp_path, capsys):
    import ray

    from pipelines import compare, evaluate, train

    toy_policy = str(REPO / "mentor_ray/toy_world/shipped/policy")
    _one_line_error(capsys, train.main([f"logging.run_root={tmp_path}", "model.max_model_len=4096"]), 2,
                    "model.max_model_len=4096", "has 512 positions")
    _one_line_error(capsys, evaluate.main(["--model", toy_policy, "--benchmarks", "math500", "--limit", "-3",
                                           "--out", str(tmp_path / "e1")]), 2, "--limit -3")
    _one_line_error(capsys, evaluate.main(["--model", toy_policy, "--benchmarks", "math500", "--samples", "0",
                                           "--out", str(tmp_path / "e2")]), 2, "--samples 0")
    _one_line_error(capsys, evaluate.main(["--model", toy_policy, "--benchmarks", "math500", "--config",
                                           str(train.DEFAULT_RECIPE), "--out", str(tmp_path / "e3"), "model.max_model_len=4096"]),
                    2, "has 512 positions")
    _one_line_error(capsys, compare.main(["--runs", str(tmp_path / "A"), str(tmp_path / "B")]), 2, "--runs", "no such folder")
    # A missing or misnamed --file is refused before Ray starts (it took 25 s to say so).
    _one_line_error(capsys, evaluate.main(["--model", toy_policy, "--benchmarks", "math500", "--file",
                                           f"math500={tmp_path / 'missing.jsonl'}", "--out", str(tmp_path / "e4")]),
                    2, "--file math500=", "missing.jsonl: no such file")
    _one_line_error(capsys, evaluate.main(["--model", toy_policy, "--benchmarks", "math500", "--file", "math5000=x.jsonl",
                                           "--out", str(tmp_path / "e5")]), 2, "unknown benchmark 'math5000'")
    _one_line_error(capsys, evaluate.main(["--model", toy_policy, "--benchmarks", "math500", "--file", "math500",
                                           "--out", str(tmp_path / "e6")]), 2, "expected NAME=PATH")
    # The capacity plan: a negative GPU memory and a cluster file that is not YAML, one line each.
    gpu_recipe = str(REPO / "configs/qwen2.5-7b.yaml")
    _one_line_error(capsys, plan.main(["--config", gpu_recipe, "--gpu-memory-gib", "-5"]), 2,
                    "--gpu-memory-gib -5: must be a positive number")
    broken = tmp_path / "broken.yaml"
    broken.write_text("available_node_types:\n  gpu_worker: {resources: {GPU: 8}\n  head: [\n")
    _one_line_error(capsys, plan.main(["--config", gpu_recipe, "--cluster", str(broken)]), 2,
                    f"--cluster {broken}: not valid YAML at line")
    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match=r"rollout.temperature=inf: must be a finite number"):
        load_config(None, ["rollout.temperature=inf"])
    with pytest.raises(ConfigError, match=r"guidance.tau_floor=nan: must be a finite number"):
        load_config(None, ["guidance.tau_floor=.nan"])


def test_evaluation_without_a_config_takes_its_lengths_from_the_model():
    from pipelines.evaluate import lengths_from_model

    # The toy policy has 512 positions: a quarter for the prompt, the rest for the response.
    assert lengths_from_model("toy://policy") == (
        "model.max_model_len=512", "data.max_prompt_tokens=128", "rollout.max_response_tokens=384")
    assert lengths_from_model("Qwen/Qwen2.5-7B") == ()  # longer than the default context: the defaults stand


def test_sweep_files_with_a_misspelt_key_or_an_unreported_metric_are_refused(tmp_path):
    from tuning.space import check_sweep, load_sweep

    text = (REPO / "tuning/sweeps/toy.yaml").read_text().replace("../../pipelines", str(REPO / "pipelines"))
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(text.replace("guidance.alpha_0: {uniform", "guidance.alpha0: {uniform"))
    with pytest.raises(ConfigError, match=r"parameters.guidance.alpha0: unknown key; did you mean guidance.alpha_0\?"):
        load_sweep(misspelt)
    metric = tmp_path / "metric.yaml"
    metric.write_text(text.replace("metric: objective/val_accuracy", "metric: objective/val_accuarcy")
                      .replace("metric: objective/running_accuracy", "metric: rollout/on_policy_acuracy"))
    with pytest.raises(ConfigError) as refused:
        check_sweep(load_sweep(metric))
    assert "search.objectives: 'objective/val_accuarcy' is not a metric the loop reports; did you mean objective/val_accuracy?" in str(refused.value)
    assert "asha.metric: 'rollout/on_policy_acuracy' is not a metric the loop reports; did you mean rollout/on_policy_accuracy?" in str(refused.value)
    # A swept value that does not fit the cluster is refused per value, with the plan's line.
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump({
        "name": "gpu", "base_config": str(REPO / "configs/qwen2.5-7b.yaml"),
        "parameters": {"optimizer.micro_batch_samples": {"choice": [4, 16]}},
        "search": {"num_trials": 2, "objectives": [{"metric": "objective/running_accuracy", "mode": "max"}]},
    }))
    with pytest.raises(ConfigError, match=r"parameters.optimizer.micro_batch_samples: value 16 is refused .*learners do not fit"):
        check_sweep(load_sweep(gpu))


def test_a_cut_off_reference_is_a_bad_reference():
    from mentor_ray.rewards.scoring import grade_accuracy

    assert grade_accuracy("so \\boxed{1}", "\\frac{") == (0.0, "bad_reference")
    assert grade_accuracy("so \\boxed{1}", "\\frac{1}{2") == (0.0, "bad_reference")
    assert grade_accuracy("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}") == (1.0, "ok")
    assert grade_accuracy("so \\boxed{\\{1,2\\}}", "\\{1,2\\}") == (1.0, "ok")  # escaped braces are text
    # A worked solution is read through its last box, whatever precedes it.
    assert grade_accuracy("so \\boxed{3}", "} cut here. Thus \\boxed{3}") == (1.0, "ok")


def test_every_metric_a_run_reports_is_known(short_run):
    from mentor_ray.metrics import is_step_metric

    records = [json.loads(line) for line in (Path(short_run.run_dir) / "metrics.jsonl").read_text().splitlines()]
    unknown = sorted({key for record in records for key in record if key != "step" and not is_step_metric(key)})
    assert not unknown, f"add these to mentor_ray.metrics.STEP_METRICS: {unknown}"


def test_a_failure_after_start_up_is_one_line_naming_the_log(local_ray):
    from pipelines.train import LOG_NOTE, failure_line

    @local_ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("engine could not start: max_model_len 4096 > 512")

        def ping(self):
            return 1

    with pytest.raises(Exception) as raised:
        local_ray.get(Broken.remote().ping.remote(), timeout=60)
    error = raised.value
    error.add_note(f"{LOG_NOTE}/runs/x/run.log")
    line = failure_line(error)
    assert "\n" not in line and "ValueError: engine could not start: max_model_len 4096 > 512" in line
    assert line.endswith("(traceback in /runs/x/run.log)")
    chained = RuntimeError("outer")
    chained.__cause__ = KeyError("inner")
    assert failure_line(chained).startswith("KeyError: 'inner'")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
