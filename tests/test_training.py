"""The whole RL loop on the toy world: real engines, real DeepSpeed learners, real Ray Train."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from short_runs import short_config

from mentor_ray.config import ConfigError, load_config
from mentor_ray.metrics import read_metrics
from pipelines.loop import LoopHooks
from pipelines.train import DEFAULT_RECIPE, run_training

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, *extra):
    return short_config(tmp_path, *extra)


def test_short_run_writes_everything(short_run):
    run_dir = Path(short_run.run_dir)
    history = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in history] == [0, 1, 2, 3]  # step 0: the initial policy's validation
    assert "val/greedy_accuracy" in history[0]
    first = history[1]
    for key in ("rollout/on_policy_reward", "rollout/mixed_reward", "rollout/entropy_mean", "rollout/entropy_p95",
                "guidance/entropy_threshold", "guidance/alpha", "train/loss", "train/grad_norm",
                "train/clip_high_fraction", "rollout/mixture_weight_mean", "time/rollout_seconds", "time/sync_seconds",
                "habits/on_policy_verify", "habits/mixed_filler", "signal/expert_tokens_per_prompt"):
        assert key in first and math.isfinite(first[key]), key
    assert first["guidance/entropy_threshold"] == 0.5  # tau_init
    # tau for step 2 is the p95 quantile (floored) of step 1's on-policy entropies.
    assert history[2]["guidance/entropy_threshold"] >= 0.3
    assert "val/greedy_accuracy" in history[2] and "val/greedy_accuracy" in history[3]
    for name in ("val_accuracy.png", "entropy.png", "response_length.png", "reward.png", "timeline.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3
    # Lockstep (rollout.max_staleness=0): every row fresh, nothing corrected, nothing dropped, and
    # the roles take turns: each works part of the step, never the engines beside the learners.
    for row in history[1:]:
        assert row["rollout/weights_version"] == row["step"] - 1 and row["rollout/behaviour_lag_max"] == 0
        assert row["rollout/stale_rows_dropped"] == 0 and row["train/behaviour_corrected_token_share"] == 0
        for role in ("policy_engines", "mixed_engines", "learners"):
            assert 0.05 < row[f"busy/{role}_share"] < 0.95, (row["step"], role)
        assert row["busy/overlap_share"] < 0.02, row["step"]
    from mentor_ray.timeline import read_chrome_trace

    busy, steps = read_chrome_trace((run_dir / "timeline.json").read_text())
    assert [step for step, _, _ in steps] == [1, 2, 3] and busy["learners"] and busy["policy_engines"]
    assert summary["idlest_role"] in ("policy_engines", "mixed_engines", "learners")


def test_exported_model_loads_in_transformers(short_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(short_run.final_model)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size >= len(tokenizer)


def test_exported_model_serves_in_vllm(short_run, toy_world):
    """vLLM loads the exported folder and scores its own greedy answers as transformers does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_ray.rollout.engines import EngineSettings, PolicyEngine
    from mentor_ray.rollout.requests import SamplingSpec
    from mentor_ray.toy_world import chat_prompt
    from mentor_ray.toy_world.evaluate import is_well_formatted

    folder = Path(short_run.final_model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    problems = [json.loads(line)["problem"] for line in toy_world.eval_path.read_text().splitlines()[:4]]
    prompts = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in problems]
    engine = PolicyEngine(str(folder), EngineSettings(max_model_len=256, seed=0))
    try:
        results = engine.generate(prompts, SamplingSpec(n=1, max_new_tokens=48, temperature=0.0))
    finally:
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for prompt, result in zip(prompts, results):
        assert is_well_formatted(result.response_text), result.response_text
        sequence = torch.tensor([prompt + result.response_token_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(sequence).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        reference = log_probs.gather(1, torch.tensor(result.response_token_ids)[:, None])[:, 0]
        assert float((reference - torch.tensor(result.response_log_probs)).abs().max()) < 1e-3


def test_config_errors_before_work(tmp_path, toy_world):
    with pytest.raises(ConfigError, match="model.policy_path"):
        run_training(_config(tmp_path, f"model.policy_path={tmp_path}/nothing-here"))
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        run_training(_config(blocked))


def _step_metrics(run_dir, step):
    from mentor_ray import storage

    return next(r for r in read_metrics(storage.join(str(run_dir), "metrics.jsonl")) if r["step"] == step)


def test_resume_from_a_bucket_continues_the_same_run(short_run, s3_bucket, monkeypatch, warm_runs):
    """The run folder in an S3 bucket (moto on loopback): resumed there at step 2, step 3
    reproduces the uninterrupted run's step 3, and the resumed run writes only to the bucket."""
    from mentor_ray import storage
    from pipelines.loop import CLIENT_STATE_FILE

    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    uploaded = s3_bucket.uri("resume-test", "short")
    storage.upload_dir(short_run.run_dir, uploaded)
    checkpoint = next(
        storage.join(uploaded, name.rpartition("/")[0]) for name in storage.list_files(uploaded, recursive=True)
        if name.endswith(CLIENT_STATE_FILE) and json.loads(storage.read_text(storage.join(uploaded, name)))["step"] == 2
    )
    resumed = run_training(short_config(s3_bucket.uri("resume-test"), "logging.run_name=resumed", f"checkpoint.resume_from={checkpoint}"),
                           warm_actors=warm_runs)
    assert resumed.run_dir == s3_bucket.uri("resume-test", "resumed")
    assert [r["step"] for r in read_metrics(storage.join(resumed.run_dir, "metrics.jsonl"))] == [3]
    original, again = _step_metrics(short_run.run_dir, 3), _step_metrics(resumed.run_dir, 3)
    # Same prompts, same sampling seeds, same weights and optimizer state: float noise only.
    for key in ("rollout/on_policy_reward", "rollout/mixed_reward", "rollout/response_length", "guidance/entropy_threshold"):
        assert again[key] == pytest.approx(original[key], abs=1e-6), key
    for key in ("train/loss", "train/grad_norm", "rollout/entropy_mean", "val/greedy_accuracy"):
        assert again[key] == pytest.approx(original[key], rel=1e-3, abs=1e-5), key
    stored = storage.list_files(resumed.run_dir, recursive=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "run.log", "plots/val_accuracy.png", "final_model/config.json",
                 "final_model/model.safetensors", "placement.json"):
        assert name in stored, (name, stored)
    assert any(name.startswith("ray_train/checkpoint_") and name.endswith(CLIENT_STATE_FILE) for name in stored)


def test_compare_reads_finished_runs_from_a_bucket(short_run, s3_bucket, monkeypatch, capsys):
    from mentor_ray import storage
    from pipelines.compare import main as compare_main

    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    for label in ("mentor", "grpo"):
        storage.upload_dir(short_run.run_dir, s3_bucket.uri("compare-test", label))
    assert compare_main(["--runs", s3_bucket.uri("compare-test", "mentor"), s3_bucket.uri("compare-test", "grpo"),
                         "--pass-at-k-samples", "0"]) == 0
    (folder,) = [name for name in storage.list_dirs(s3_bucket.uri("compare-test")) if name.startswith("compare-")]
    numbers = json.loads(storage.read_text(s3_bucket.uri("compare-test", folder, "comparison.json")))
    # The same run on both sides: every paired number equal.
    assert numbers["mentor_entropy_end_of_guidance"] == numbers["grpo_entropy_end_of_guidance"]
    assert storage.is_file(s3_bucket.uri("compare-test", folder, "summary.md"))
    capsys.readouterr()
    assert compare_main(["--runs", s3_bucket.uri("compare-test", "nothing"), s3_bucket.uri("compare-test", "grpo")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --runs:") and "compare-test/nothing" in error and "Traceback" not in error


def _shard_records(folder: Path, rank: int) -> dict[int, list[list[tuple]]]:
    """step -> this rank's local mini-batches, each a list of (group_id, is_mixed, response ids)."""
    records = [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]
    return {r["step"]: [[(g, m, tuple(ids)) for g, m, ids, _ in batch] for batch in r["mini_batches"]] for r in records}


def _trained_versions(folder: Path, rank: int = 0) -> dict[int, set[int]]:
    """step -> the weights versions of the rows this rank trained on (the last attempt of a
    step that was re-run after a restart)."""
    records = [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]
    return {r["step"]: {version for batch in r["mini_batches"] for *_, version in batch} for r in records}


def test_two_learner_workers_train_as_one_and_stop_together_on_nan(short_run, tmp_path, warm_runs):
    """The loop with 2 DeepSpeed learner workers: each rank trains on its own half of every
    global mini-batch, and the run's numbers equal the 1-worker run of the same seed (float noise:
    the gradient all-reduce sums in another order). Then NaN losses on every rank: step 3's
    updates are skipped (weights untouched) and past the limit, at step 4, both ranks stop
    cleanly: no checkpoint or model from the poisoned step, and the error says why."""
    from pipelines.loop import CLIENT_STATE_FILE, STOP_FILE

    (tmp_path / "shards").mkdir()
    run_dir = tmp_path / "two"
    # The run folder is reused and holds an earlier run's stop marker: only this run's may count.
    run_dir.mkdir()
    (run_dir / STOP_FILE).write_text(json.dumps({"reason": "step 9: an earlier run's NaN stop"}))
    # 2 optimizer steps per RL step (8 prompts, 4 per mini-batch): step 3 skips 2 (allowed),
    # step 4 skips 2 more (4 > 2: stop).
    two = run_training(
        _config(tmp_path, "logging.run_name=two", "scaling.num_learner_workers=2", "total_steps=4",
                "checkpoint.every_steps=1", "checkpoint.keep_last=3", "max_skipped_updates=2"),
        hooks=LoopHooks(nan_loss_at_steps=(3, 4), shard_record_dir=str(tmp_path / "shards")),
        warm_actors=warm_runs,
    )
    one_worker = _shard_records(Path(short_run.run_dir).parent / "shards", 0)
    rank0, rank1 = _shard_records(tmp_path / "shards", 0), _shard_records(tmp_path / "shards", 1)
    assert sorted(rank0) == sorted(rank1) == [1, 2, 3, 4]
    for step in (1, 2):
        assert len(rank0[step]) == len(rank1[step]) == len(one_worker[step]) == 2  # 8 prompts / 4 per mini-batch
        for whole, first, second in zip(one_worker[step], rank0[step], rank1[step]):
            # Rank 0 holds the first half of the global mini-batch, rank 1 the second: together
            # exactly what the lone worker trained on, nothing twice, nothing left out.
            assert first + second == whole
            assert abs(len(first) - len(second)) <= 1 and first and second
    for step in (1, 2):
        alone, pair = _step_metrics(short_run.run_dir, step), _step_metrics(two.run_dir, step)
        for key in ("rollout/on_policy_reward", "rollout/mixed_reward", "rollout/response_length", "train/tokens"):
            assert pair[key] == pytest.approx(alone[key], abs=1e-6), (step, key)
        for key in ("train/loss", "train/grad_norm", "train/entropy_mean", "rollout/entropy_mean",
                    "guidance/entropy_threshold", "sync/engine_weights_version_min"):
            assert pair[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), (step, key)
        assert pair["transfer/rollout_bytes"] > 0 and pair["transfer/rollout_bytes_per_rank_max"] < pair["transfer/rollout_bytes"]
    assert _step_metrics(two.run_dir, 2)["val/greedy_accuracy"] == _step_metrics(short_run.run_dir, 2)["val/greedy_accuracy"]

    # The NaN steps.
    assert two.stopped is not None and two.stopped.startswith("step 4: 4 updates skipped for a NaN/inf loss"), two.stopped
    assert two.final_model == ""
    history = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in history] == [0, 1, 2, 3, 4]
    assert [r.get("train/skipped_updates") for r in history[1:]] == [0.0, 0.0, 2.0, 2.0]
    assert not (run_dir / "final_model").exists()
    assert json.loads((run_dir / "summary.json").read_text())["stopped"].startswith("step 4")
    assert json.loads((run_dir / STOP_FILE).read_text())["reason"].startswith("step 4")

    checkpoints = {json.loads(p.read_text())["step"]: p.parent for p in run_dir.rglob(CLIENT_STATE_FILE)}
    assert sorted(checkpoints) == [1, 2, 3]  # nothing from the step that stopped the run

    def weights(step):
        (model_file,) = checkpoints[step].rglob("mp_rank_00_model_states.pt")
        return torch.load(model_file, map_location="cpu", weights_only=False)["module"]

    after_step_2, after_step_3 = weights(2), weights(3)
    # Step 3's updates were all skipped on both ranks: its checkpoint holds step 2's weights, bit for bit.
    for name, tensor in after_step_3.items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, after_step_2[name]), name


def test_first_ppo_ratio_is_one(toy_world, warm_runs):
    """For freshly synced weights the learner's log-probs of sampled tokens equal the engine's,
    at any sampling temperature: both score the distribution the engine sampled from."""
    from transformers import AutoTokenizer

    from mentor_ray.learner import PolicyLearner, TrainingSample
    from mentor_ray.data.run_inputs import load_tokenized_problems
    from mentor_ray.toy_world import TOY_SYSTEM_PROMPT
    from pipelines.roles import build_rollout_roles
    from pipelines.rollout import PromptRecord, RolloutPlan, run_rollout

    # The engines do not depend on the temperature (the plan carries it), so both temperatures
    # share one engine set; each gets its own learner, whose scoring temperature is config.
    base = _config(Path("/tmp"), "rollout.n_mixed=0", "model.expert_path=null")
    tokenizer = AutoTokenizer.from_pretrained(toy_world.policy_dir)
    problems, _ = load_tokenized_problems(str(toy_world.train_path), base, tokenizer, TOY_SYSTEM_PROMPT, "train", limit=8)
    roles = build_rollout_roles(base, str(toy_world.policy_dir), None, warm=warm_runs)
    try:
        for version, temperature in enumerate((1.0, 0.7), start=1):
            config = _config(Path("/tmp"), "rollout.n_mixed=0", "model.expert_path=null", f"rollout.temperature={temperature}")
            learner = PolicyLearner(toy_world.policy_dir, config, world_size=1, rank=0)
            # Move the learner's weights off the checkpoint the engine loaded (differently for
            # each temperature), so the match below can only come from the in-place sync (tied
            # embeddings and head included).
            generator = torch.Generator().manual_seed(version)
            with torch.no_grad():
                for parameter in learner.module.parameters():
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
            roles.publish_weights(version, learner.export_weights())
            plan = RolloutPlan(step=version, seed=0, n_on_policy=4, n_mixed=0, max_new_tokens=64, temperature=temperature,
                               top_p=1.0, entropy_threshold=1.0, alpha=0.0, weights_version=version)
            rows = run_rollout([PromptRecord(i, p.problem_id, p.answer, p.prompt_token_ids) for i, p in enumerate(problems)], plan, roles).rows
            samples = [TrainingSample(list(r["prompt_token_ids"]), list(r["response_token_ids"]), 0.0, False, r["prompt_index"]) for r in rows]
            old_log_probs, _ = learner.compute_old_log_probs(samples)
            differences = [
                float((lp - torch.tensor(r["behaviour_log_probs"], dtype=torch.float32)).abs().max())
                for lp, r in zip(old_log_probs, rows)
            ]
            # fp32 on CPU: vLLM and transformers kernels differ by summation order only.
            assert max(differences) < 1e-3, (temperature, max(differences))
            ratios = torch.cat([torch.exp(lp - torch.tensor(r["behaviour_log_probs"])) for lp, r in zip(old_log_probs, rows)])
            assert float((ratios - 1).abs().max()) < 1e-3, temperature
    finally:
        roles.shutdown()


def _kill_learner_workers_after(metrics_path: Path, step: int, killed: dict) -> None:
    """SIGKILL this session's Ray Train learner workers once `step` is logged and a checkpoint
    registered; records the pid (or the errors met) in `killed`."""
    import psutil

    deadline = time.time() + 600
    while time.time() < deadline and not killed.get("pid"):
        try:
            # Ray Train registers a reported checkpoint asynchronously; kill once it has.
            snapshot = metrics_path.parent / "ray_train" / "checkpoint_manager_snapshot.json"
            registered = snapshot.exists() and json.loads(snapshot.read_text())["checkpoint_results"]
            if registered and any(r["step"] >= step for r in read_metrics(metrics_path)):
                own_session = {p.pid for p in psutil.Process().children(recursive=True)}
                for process in psutil.process_iter(["pid", "cmdline"]):
                    # Ray titles each worker process after its actor class: "ray::RayTrainWorker...".
                    cmdline = " ".join(process.info["cmdline"] or [])
                    if cmdline.startswith("ray::RayTrainWorker") and (process.info["pid"] in own_session or not own_session):
                        process.send_signal(signal.SIGKILL)
                        killed["pid"] = process.info["pid"]
                        killed["step_lines"] = {r["step"]: r for r in read_metrics(metrics_path)}
                return
        except Exception as error:  # noqa: BLE001 - reported through the caller's assert
            killed.setdefault("errors", []).append(repr(error))
        time.sleep(0.2)


def test_mentor_lifts_the_toy_policy_with_a_step_in_flight_through_a_learner_restart(toy_world, tmp_path, warm_runs):
    """Six MENTOR steps of the embedded recipe (seed 42) with one step of overlap
    (rollout.max_staleness=1) already make the policy unlearn its stop-early habit: validation
    accuracy jumps, and guided samples out-earn on-policy ones. Every row trained at step k was
    made by weights version k-1 or k-2, k-2 from step 2 on. The learner worker is killed after
    step 3, with step 4's rollout in flight: Ray Train restarts it from the step-2 checkpoint,
    which stored step 3's finished rollout; the re-run step 3 repeats the first one, and
    metrics.jsonl holds every step once."""
    config = load_config(DEFAULT_RECIPE, [
        f"logging.run_root={tmp_path}", "logging.run_name=learns", "total_steps=6", "eval.every_steps=6",
        "eval.max_problems=64", "checkpoint.every_steps=2", "rollout.max_staleness=1",
    ])
    metrics_path = tmp_path / "learns" / "metrics.jsonl"
    (tmp_path / "shards").mkdir()
    killed: dict = {}
    killer = threading.Thread(target=_kill_learner_workers_after, args=(metrics_path, 3, killed), daemon=True)
    killer.start()
    try:
        summary = run_training(config, hooks=LoopHooks(shard_record_dir=str(tmp_path / "shards")), warm_actors=warm_runs)
    finally:
        killer.join(timeout=5)
    assert "pid" in killed, f"the learner worker was never killed: {killed}"
    assert summary.steps == 6
    # The lines logged after the checkpoint were replaced by the re-run's: each step once.
    assert [json.loads(line)["step"] for line in metrics_path.read_text().splitlines()] == [0, 1, 2, 3, 4, 5, 6]
    history = read_metrics(metrics_path)
    initial, final = history[0]["val/greedy_accuracy"], history[-1]["val/greedy_accuracy"]
    # Measured 0.23 -> 0.55 on 128 problems in lockstep; 64 problems give a standard error of
    # ~0.08 on the difference, so +0.15 leaves room for float noise while a broken update cannot pass.
    assert final >= initial + 0.15, (initial, final)
    guided = [r for r in history if r.get("rollout/mixed_samples", 0) > 0 and r["step"] >= 3]
    assert len(guided) == 4  # tau of step 2 is still tau_init: step 0's pass does not exist
    mixed = sum(r["rollout/mixed_reward"] for r in guided) / len(guided)
    on_policy = sum(r["rollout/on_policy_reward"] for r in guided) / len(guided)
    assert mixed >= on_policy + 0.1, (mixed, on_policy)

    # Staleness: versions count updates, so step k's learner holds version k - 1.
    versions = _trained_versions(tmp_path / "shards")
    assert versions == {1: {0}, **{k: {k - 2} for k in range(2, 7)}}, versions
    for row in history[2:]:
        assert row["rollout/stale_rows_dropped"] == 0 and row["rollout/behaviour_lag_max"] == 1
        assert row["rollout/weights_version"] == row["step"] - 2
        assert 0 < row["train/behaviour_corrected_token_share"] < 1  # the on-policy share of tokens
        assert 0.5 < row["train/behaviour_weight_mean"] < 2.0
        # tau of step k is set by step k-2's learner pass: the threshold step k+2 logs.
    for earlier, later in zip(history[1:], history[3:]):
        assert later["guidance/entropy_threshold"] == pytest.approx(
            max(earlier["rollout/entropy_p95"], config.guidance.tau_floor), rel=1e-5), (earlier["step"], later["step"])
    # The restart resumed from a checkpoint taken with step 3's rollout finished and in flight:
    # the re-run trains on exactly those samples, so step 3 repeats itself.
    first, again = killed["step_lines"][3], history[3]
    for key in ("rollout/on_policy_reward", "rollout/mixed_reward", "rollout/response_length", "guidance/entropy_threshold",
                "train/tokens"):
        assert again[key] == first[key], key
    for key in ("train/loss", "train/grad_norm", "rollout/entropy_mean"):
        assert again[key] == pytest.approx(first[key], rel=1e-4, abs=1e-6), key


def test_unnamed_run_folders_say_which_algorithm(tmp_path):
    from mentor_ray.data.run_inputs import make_run_dir

    def made(*extra):
        return Path(make_run_dir(_config(tmp_path, *extra)))

    assert made().name.startswith("mentor-")
    assert made("rollout.n_mixed=0").name.startswith("grpo-")
    assert made("logging.run_name=mine").name == "mine"
    # Two unnamed runs started in the same second (concurrent trials) get their own folders;
    # a named one is reused (that is how a resumed run finds itself).
    first, second = made(), made()
    assert first != second and first.parent == second.parent
    assert made("logging.run_name=mine").name == "mine"


def test_console_of_a_direct_run_is_a_start_line_one_line_per_step_and_a_summary(short_run):
    """What a person sees of `python -m pipelines.train` (the short run, started so): nothing
    from the libraries (their output is in the run folder's run.log), each step line exactly
    once, no 'nan'."""
    lines = short_run.stdout.splitlines()
    assert lines[0].startswith("MENTOR run ") and "run.log" in lines[0]
    # Step 0 is the initial policy's validation.
    assert [line.split(" |")[0] for line in lines[1:-1]] == ["step 0/3", "step 1/3", "step 2/3", "step 3/3"], short_run.stdout[-4000:]
    assert "initial policy val" in lines[1] and "ETA" in lines[2] and lines[-1].startswith("done: 3 steps")
    assert "| idlest role " in lines[-1] and "% of the time" in lines[-1]
    assert "nan" not in short_run.stdout.lower()
    assert short_run.stderr.strip() == ""
    log = (Path(short_run.run_dir) / "run.log").read_text()
    assert "Started a local Ray instance" in log  # library output went to the run folder


def test_a_run_on_shared_storage_mirrors_its_log_while_it_runs(tmp_path):
    """A trial a sweep stops is killed, never reaching the final upload: the staged log reaches
    the run folder while the run goes on."""
    from pipelines.train import StagingMirror

    staging, run_folder = tmp_path / "staging", tmp_path / "run"
    staging.mkdir()
    run_folder.mkdir()  # make_run_dir made it
    (staging / "run.log").write_text("step 1\n")
    mirror = StagingMirror(staging, f"file://{run_folder}", every_s=0.1)
    try:
        deadline = time.time() + 10
        while not (run_folder / "run.log").is_file() and time.time() < deadline:
            time.sleep(0.05)
        (staging / "run.log").write_text("step 1\nstep 2\n")
        while (run_folder / "run.log").read_text() != "step 1\nstep 2\n" and time.time() < deadline:
            time.sleep(0.05)
    finally:
        mirror.stop()
    assert (run_folder / "run.log").read_text() == "step 1\nstep 2\n"
