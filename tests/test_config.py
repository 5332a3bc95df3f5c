import pytest

from mentor_ray.config import ConfigError, MentorConfig, load_config, parse_override, save_config


def test_defaults_are_the_papers():
    config = load_config()
    assert config.rollout.n_on_policy == 8 and config.rollout.n_mixed == 4
    assert config.rollout.temperature == 1.0 and config.rollout.top_p == 1.0
    assert config.guidance.entropy_quantile == 0.95
    assert config.guidance.tau_floor == 1.5 and config.guidance.tau_init == 999.0
    assert config.guidance.alpha_0 == 1.0 and config.guidance.decay_steps == 120
    assert (config.loss.eps_low, config.loss.eps_high, config.loss.dual_clip) == (0.2, 0.28, 3.0)
    assert config.loss.kl_coef == 0.0 and config.loss.entropy_coef == 0.0
    assert config.optimizer.lr == 1e-6 and config.optimizer.weight_decay == 0.01
    assert config.optimizer.grad_clip == 1.0 and config.optimizer.mini_batch_prompts == 64
    assert config.rollout.prompts_per_step == 128
    assert config.reward.accuracy_weight == 0.9 and config.reward.format_weight == 0.1
    assert config.deepspeed.zero_stage == 2
    assert config.rollout.guidance_ratio == pytest.approx(4 / 12)


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("guidance:\n  entropy_quantile: 0.8\nrollout:\n  n_mixed: 2\n")
    config = load_config(path, ["guidance.entropy_quantile=0.9", "loss.dual_clip=null", "optimizer.betas=[0.9, 0.95]"])
    assert config.guidance.entropy_quantile == 0.9
    assert config.rollout.n_mixed == 2
    assert config.loss.dual_clip is None
    assert config.optimizer.betas == (0.9, 0.95)


def test_round_trip_through_yaml(tmp_path):
    config = load_config(None, ["seed=7", "logging.sinks=[jsonl, tensorboard]"])
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_int_is_accepted_for_float():
    assert load_config(None, ["guidance.tau_floor=2"]).guidance.tau_floor == 2.0
    assert load_config(None, ["optimizer.lr=5e-4"]).optimizer.lr == 5e-4  # YAML 1.1 reads this as a string
    assert load_config(None, ["logging.run_name=run7"]).logging.run_name == "run7"


@pytest.mark.parametrize(
    "override, expected_fragments",
    [
        (["guidance.entropy_quantil=0.9"], ["guidance.entropy_quantil", "unknown key", "did you mean guidance.entropy_quantile"]),
        (["guidance.entropy_quantile=1.5"], ["guidance.entropy_quantile=1.5", "(0, 1)"]),
        (["guidance.entropy_quantile=0"], ["guidance.entropy_quantile=0", "(0, 1)"]),
        (["rollout.n_on_policy=eight"], ["rollout.n_on_policy='eight'", "integer"]),
        (["rollout.n_on_policy=8.5"], ["rollout.n_on_policy=8.5", "integer"]),
        (["deepspeed.zero_stage=4"], ["deepspeed.zero_stage=4", "one of [1, 2, 3]"]),
        (["model.expert_path=null"], ["rollout.n_mixed=4", "model.expert_path"]),
        (["optimizer.mini_batch_prompts=48"], ["optimizer.mini_batch_prompts=48", "divide"]),
        (["logging.sinks=[jsonl, nope]"], ["logging.sinks='nope'", "one of"]),
        (["rollout=3"], ["rollout=3", "mapping"]),
        (["loss.dual_clip=0.5"], ["loss.dual_clip=0.5", "> 1"]),
        (["deepspeed.offload_params=true"], ["deepspeed.offload_params", "zero_stage=3"]),
        (["rollout.max_response_tokens=9000"], ["model.max_model_len", ">= data.max_prompt_tokens"]),
        # What only a learner worker used to find, after the engines were built (issue 11).
        (["model.dtype=float16"], ["model.dtype='float16'", "loss scaling"]),
        (["model.dtype=bfloat16"], ["deepspeed.bf16=False", "model.dtype=bfloat16"]),
        (["loss.kl_coef=0.01"], ["loss.kl_coef=0.01", "reference model"]),
        (["optimizer.logit_chunk_tokens=0"], ["optimizer.logit_chunk_tokens=0", ">= 1"]),
        # Settings a method cannot run with (issue 22).
        (["algorithm.method=ppo"], ["algorithm.method='ppo'", "one of ['mentor', 'grpo', 'luffy', 'questa']"]),
        (["algorithm.method=luffy"], ["rollout.n_mixed=4", "must be 0 for algorithm.method=luffy", "--method luffy"]),
        (["algorithm.method=questa", "rollout.n_mixed=0", "model.expert_path=null"],
         ["model.expert_path=None", "algorithm.method=questa", "traces come from the expert"]),
        (["algorithm.method=luffy", "rollout.n_mixed=0", "algorithm.shaping_gamma=0"], ["algorithm.shaping_gamma=0", "> 0"]),
        (["algorithm.hint_fraction=1.5"], ["algorithm.hint_fraction=1.5", "(0, 1]"]),
        (["algorithm.expert_trace_samples=0"], ["algorithm.expert_trace_samples=0", ">= 1"]),
        # QuestA as its authors run it (issue 30): hard problems only, then shorter hints.
        (["algorithm.hint_select_max_correct=8"], ["algorithm.hint_select_max_correct=8", "0..hint_select_samples - 1 (7)"]),
        (["algorithm.hint_select_samples=0"], ["algorithm.hint_select_samples=0", ">= 1"]),
        (["algorithm.later_hint_fraction=0"], ["algorithm.later_hint_fraction=0", "(0, 1]"]),
        (["algorithm.later_hint_step=0"], ["algorithm.later_hint_step=0", ">= 1 (or null: one stage)"]),
        # How weights reach the engines (issue 29).
        (["sync.transport=nccl"], ["sync.transport='nccl'", "one of ['object_store', 'collective']"]),
        (["sync.bucket_mb=0"], ["sync.bucket_mb=0", "> 0"]),
        (["sync.timeout_s=-5"], ["sync.timeout_s=-5", "> 0 seconds"]),
        (["sync.verify_every_steps=-1"], ["sync.verify_every_steps=-1", ">= 0"]),
        (["sync.transprt=collective"], ["sync.transprt", "did you mean sync.transport"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, expected_fragments):
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    message = str(info.value)
    for fragment in expected_fragments:
        assert fragment in message, message


def test_all_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["guidance.entropy_quantile=2", "loss.eps_low=-1"])
    assert "guidance.entropy_quantile" in str(info.value) and "loss.eps_low" in str(info.value)


def test_grpo_baseline_needs_no_expert():
    config = load_config(None, ["rollout.n_mixed=0", "model.expert_path=null"])
    assert config.rollout.n_mixed == 0 and config.model.expert_path is None


@pytest.mark.parametrize("recipe", ["configs/qwen2.5-3b.yaml", "configs/qwen2.5-7b.yaml", "configs/llama3.1-8b.yaml",
                                    "pipelines/recipes/toy_hesitant.yaml"])
@pytest.mark.parametrize("method", ["mentor", "grpo", "luffy", "questa"])
def test_every_recipe_loads_with_every_method_and_keeps_the_shared_settings(recipe, method):
    """`--method NAME` on a paper recipe: the method, no mixed samples but for MENTOR, and
    everything the methods share (data, lr, steps, loss, group size) untouched."""
    from pathlib import Path

    from pipelines.train import method_overrides

    path = Path(__file__).resolve().parents[1] / recipe
    base, config = load_config(path), load_config(path, method_overrides(method))
    assert config.algorithm.method == method
    assert config.rollout.n_mixed == (base.rollout.n_mixed if method == "mentor" else 0)
    assert config.guided == (method == "mentor")
    for section in ("data", "optimizer", "loss", "model"):
        assert getattr(config, section) == getattr(base, section), section
    assert (config.total_steps, config.rollout.n_on_policy, config.seed) == (base.total_steps, base.rollout.n_on_policy, base.seed)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("no-equals-sign")


def test_default_instance_equals_loaded_default():
    assert load_config() == MentorConfig()
