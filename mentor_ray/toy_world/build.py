"""The toy world: tokenizer, expert, policy, RL data. Shipped built; rebuilt only on request.

The default world is shipped in the package (``SHIPPED_ROOT``, about 1 MB): float training
differs between CPUs (AVX2 vs AVX-512 reductions), so a world built on each machine would give
each machine different models and different numbers, and the build costs 5-11 minutes. A
recipe whose hash matches the shipped report is served from there; any other recipe (or
``force``) is built and cached. ``python -m mentor_ray.toy_world --ship`` rebuilds the default
world into the package; ``MANIFEST`` there holds every file's sha256, checked by the tests.
Named worlds (``TOY_WORLDS``) ship the same way in ``shipped-<name>``
(``--world NAME --ship``).

Everything follows from a frozen ``ToyWorldRecipe``; the cache folder is named by a hash of it,
so changing any build parameter (or bumping ``TOY_WORLD_VERSION``) builds a new world beside
the old one. ``report.json`` is written last: a folder without it is a crashed build and is
rebuilt. A file lock keeps two processes (pytest workers, Ray actors) from building the same
world at once; the second one waits and then reads the finished cache.

Models: ``Qwen2ForCausalLM`` (vLLM serves Qwen2), float32, head_dim 32 (vLLM's CPU attention
supports 32/64/80/...), ``tie_word_embeddings=True`` like the small Qwen2.5 models, so the CPU
run exercises the same tied-head weight sync as a real 0.5B-3B policy (sync ``lm_head.weight``
too, see docs/CPU_NOTES.md).

The two models differ the way MENTOR assumes a policy and an expert differ:
- the policy is smaller and half of its multi-step SFT solutions box the answer one step early,
  so at the last step boundary it hesitates between finishing and stopping: a high-entropy
  fork that decides the reward. Its finished working is mostly right, so RL has signal
  (sampled accuracy ~0.3) and a clear ceiling (~0.8) to climb towards;
- the expert never stops early, and it writes ``a+b`` / ``a*b`` steps in either operand order
  (half and half), where the policy mostly keeps the written order (one in five swapped). Both
  orders are right, so guidance at those moderately uncertain tokens shows the policy correct
  alternatives it rarely samples itself: the diversity on-policy RL does not add.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mentor_ray.toy_world.task import (
    CHECK_WORD,
    FILLER_WORDS,
    generate_problems,
    stop_at_a_boundary,
    stop_one_step_early,
    swap_operands,
    vary_separators,
    write_with_habits,
)
from mentor_ray.toy_world.tokenizer import TOY_SYSTEM_PROMPT

TOY_WORLD_VERSION = "toy-world-v4"
DEFAULT_CACHE_ROOT = Path("~/.cache/mentor-ray/toy-world")
CACHE_ENV_VAR = "MENTOR_RAY_CACHE"
REPORT_FILE = "report.json"
MANIFEST_FILE = "MANIFEST"
SHIPPED_ROOT = Path(__file__).parent / "shipped"
# Named worlds beside the default ship in sibling folders: shipped-<name>.
SHIPPED_PREFIX = "shipped-"
# Fixed so the build is reproducible bit for bit (float reductions depend on the split).
# One thread, not two: these models are so small that intra-op parallelism gains little, and
# on a shared 2-core machine (other tests, Ray workers) two OpenMP threads stall each other:
# measured 1.0-1.2 s vs 20-32 s for the same tiny build under load.
BUILD_THREADS = 1


@dataclass(frozen=True)
class ModelRecipe:
    """Shape and SFT schedule of one toy model."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    sft_steps: int
    learning_rate: float
    batch_size: int
    # Relative frequency of "*" in this model's SFT data ("+" and "-" have weight 1).
    multiply_weight: float
    # Share of this model's multi-step SFT solutions that box an answer one step early.
    early_stop_rate: float = 0.0
    # Share of "+" and "*" steps in its SFT data written with the operands swapped (pure style).
    swap_rate: float = 0.0
    # Chance, at each step boundary of its SFT solutions, that the working stops there and the
    # result so far is boxed (stop_at_a_boundary): a hesitation at every boundary, not one.
    boundary_stop_rate: float = 0.0
    # Steps joined by any of STEP_SEPARATORS, evenly, instead of always ";".
    varied_separators: bool = False
    # The habits world (task.write_with_habits; its steps joined by ";" or ","): the chance that
    # a product is written one off, a check step after every product that repairs it, and the
    # chance of "okay" / "wait" filler at each boundary between steps.
    slip_rate: float = 0.0
    checks_products: bool = False
    filler_rate: float = 0.0

    @property
    def writes_habits(self) -> bool:
        return self.slip_rate > 0 or self.checks_products or self.filler_rate > 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ToyWorldRecipe:
    """Every parameter of a build; its hash names the cache folder."""

    seed: int = 0
    version: str = TOY_WORLD_VERSION
    system_prompt: str = TOY_SYSTEM_PROMPT
    sft_difficulty: tuple[int, int] = (1, 3)
    rl_difficulty: tuple[int, int] = (2, 3)
    sft_problems: int = 20_000
    train_problems: int = 2_000
    eval_problems: int = 256
    max_position_embeddings: int = 512
    # Words the tokenizer makes one token each (tokenizer.build_toy_tokenizer); empty: none.
    word_tokens: tuple[str, ...] = ()
    expert: ModelRecipe = field(
        default_factory=lambda: ModelRecipe(
            hidden_size=96, num_layers=3, num_attention_heads=3, num_key_value_heads=1,
            intermediate_size=384, sft_steps=1600, learning_rate=5e-3, batch_size=64, multiply_weight=1.0,
            swap_rate=0.5,
        )
    )
    policy: ModelRecipe = field(
        default_factory=lambda: ModelRecipe(
            hidden_size=64, num_layers=3, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=192, sft_steps=1500, learning_rate=3e-3, batch_size=64, multiply_weight=1.0,
            early_stop_rate=0.5, swap_rate=0.2,
        )
    )

    def digest(self) -> str:
        text = json.dumps(hashed_form(dataclasses.asdict(self)), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ModelRecipe fields added after worlds were shipped, with their defaults. A recipe leaves a
# field out of its hash while it holds the default, so every world built before the field
# existed keeps its name (and its shipped copy stays found).
_LATER_MODEL_FIELDS = {
    f.name: f.default for f in dataclasses.fields(ModelRecipe) if f.name in ("boundary_stop_rate", "varied_separators", "slip_rate", "checks_products", "filler_rate")
}


def hashed_form(recipe: dict) -> dict:
    """A recipe (as JSON data) with each later model field dropped where it holds its default."""
    form = dict(recipe)
    if not form.get("word_tokens"):  # added after worlds were shipped, like the model fields below
        form.pop("word_tokens", None)
    for name in ("expert", "policy"):
        if name in form:
            form[name] = {
                key: value for key, value in form[name].items()
                if not (key in _LATER_MODEL_FIELDS and value == _LATER_MODEL_FIELDS[key])
            }
    return form


RARE_FINISH_EARLY_STOP_RATE = 0.9


def _rare_finish_world() -> ToyWorldRecipe:
    """The default world with a policy that seldom finishes its working.

    Its SFT data boxes an answer one step early in RARE_FINISH_EARLY_STOP_RATE of the
    multi-step solutions, so at the last step boundary it writes ``;`` (go on) rarely: the
    behaviour that earns reward is one the policy seldom samples, the setting where guidance
    is meant to pay (benchmarks/RESULTS.md has what MENTOR and GRPO make of it). Everything
    else (data, tokenizer, the expert, copied from the default world) is the default world's.
    """
    default = ToyWorldRecipe()
    return dataclasses.replace(default, policy=dataclasses.replace(default.policy, early_stop_rate=RARE_FINISH_EARLY_STOP_RATE))


HESITANT_BOUNDARY_STOP_RATE = 0.8


def _hesitant_world() -> ToyWorldRecipe:
    """A world where the rewarded behaviour needs several rare choices, each at an uncertain token.

    Every RL problem has 3-4 operations. The policy's SFT solutions stop at each step boundary
    with probability HESITANT_BOUNDARY_STOP_RATE, so it finishes a 3-step working about one
    time in 25 and a 4-step one about one time in 125: on-policy samples rarely earn reward.
    Both models join steps with ";", "," or " " evenly, so going on is itself a choice among
    three right marks: at a boundary the policy is uncertain (entropy about 0.7 nats), which is
    where MENTOR's mixture hands the token to the expert, who always goes on. Learning to
    finish raises the entropy there instead of lowering it (three ways to go on, one to stop).
    """
    default = ToyWorldRecipe()
    return dataclasses.replace(
        default,
        sft_difficulty=(1, 4),
        rl_difficulty=(3, 4),
        expert=dataclasses.replace(default.expert, sft_steps=2000, varied_separators=True),
        policy=dataclasses.replace(
            default.policy, sft_steps=3000, early_stop_rate=0.0,
            boundary_stop_rate=HESITANT_BOUNDARY_STOP_RATE, varied_separators=True,
        ),
    )


HABITS_SLIP_RATE = 0.3
# One token each, as such words are in a real model's vocabulary (a first build spelled them out
# character by character: MENTOR's mixture then broke every habit after its first character).
# The check's token holds the space after it too: after a space this policy has only ever written
# "\boxed{", a reflex that cut every check in a second build right after the word (RESULTS.md).
HABIT_WORD_TOKENS = (f" {CHECK_WORD} ", *(f" {word}" for word in FILLER_WORDS))
HABITS_FILLER_RATE = 0.5


def _habits_world() -> ToyWorldRecipe:
    """A world where the expert's responses carry a useful habit and filler the policy lacks.

    Both models make the same slip: a product written one off (HABITS_SLIP_RATE of products),
    after which the working goes on from the wrong value. The expert, and only the expert,
    follows every product with `` check a*b=c`` (the useful habit: the checked value is always
    right, so it repairs the slip) and says `` okay`` or `` wait`` at each boundary between steps
    with chance HABITS_FILLER_RATE (filler: it changes nothing). Neither stops early or swaps
    operands; both join steps with ";" or "," evenly, so at a boundary the policy is uncertain
    (about 0.69 nats), the position where MENTOR's mixture hands the token to the expert, whose
    next token there starts a check or a filler word. mentor_ray/habits.py counts both habits.
    """
    default = ToyWorldRecipe()
    return dataclasses.replace(
        default,
        word_tokens=HABIT_WORD_TOKENS,
        expert=dataclasses.replace(
            default.expert, sft_steps=2000, swap_rate=0.0,
            slip_rate=HABITS_SLIP_RATE, checks_products=True, filler_rate=HABITS_FILLER_RATE,
        ),
        policy=dataclasses.replace(default.policy, early_stop_rate=0.0, swap_rate=0.0, slip_rate=HABITS_SLIP_RATE),
    )


# World name -> recipe; `toy://<name>/<item>` in a config names an item of a named world.
TOY_WORLDS: dict[str, ToyWorldRecipe] = {
    "default": ToyWorldRecipe(),
    "rare-finish": _rare_finish_world(),
    "hesitant": _hesitant_world(),
    "habits": _habits_world(),
}


def world_recipe(name: str) -> ToyWorldRecipe:
    if name not in TOY_WORLDS:
        raise ValueError(f"unknown toy world {name!r}; known: {sorted(TOY_WORLDS)}")
    return TOY_WORLDS[name]


@dataclass(frozen=True)
class ToyWorld:
    """Paths of a finished build plus its report (accuracies, format rates, timings)."""

    root: Path
    tokenizer_dir: Path
    policy_dir: Path
    expert_dir: Path
    train_path: Path
    eval_path: Path
    report: dict

    @classmethod
    def at(cls, root: Path, report: dict) -> ToyWorld:
        return cls(
            root=root,
            tokenizer_dir=root / "tokenizer",
            policy_dir=root / "policy",
            expert_dir=root / "expert",
            train_path=root / "train.jsonl",
            eval_path=root / "eval.jsonl",
            report=report,
        )


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT).expanduser()


def build_toy_world(
    cache_root: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    recipe: ToyWorldRecipe | None = None,
    log: Callable[[str], None] = print,
) -> ToyWorld:
    """The toy world for ``seed`` (or ``recipe``), from cache when built before.

    force: rebuild even if a finished build is cached.
    """
    if recipe is None:
        recipe = ToyWorldRecipe(seed=seed)
    elif recipe.seed != seed and seed != 0:
        raise ValueError(f"seed={seed} conflicts with recipe.seed={recipe.seed}; pass one of them")
    if not force:
        shipped = shipped_world(recipe)
        if shipped is not None:
            return shipped
    cache_root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    root = cache_root / recipe.digest()
    if not force:
        cached = _read_finished(root)
        if cached is not None:
            return cached
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{recipe.digest()}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            # Another process may have finished the build while this one waited for the lock.
            if not force:
                cached = _read_finished(root)
                if cached is not None:
                    return cached
            if root.exists():
                shutil.rmtree(root)
            # force rebuilds every model too; otherwise a model built before from the same inputs is copied.
            return _build(root, recipe, log, None if force else cache_root)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def shipped_roots() -> list[Path]:
    """Every world shipped in the package: the default first, then the named ones."""
    return [SHIPPED_ROOT, *sorted(SHIPPED_ROOT.parent.glob(SHIPPED_PREFIX + "*"))]


def shipped_world(recipe: ToyWorldRecipe | None = None) -> ToyWorld | None:
    """The world shipped in the package, if one was built from ``recipe`` (default: the default)."""
    wanted = (recipe or ToyWorldRecipe()).digest()
    for root in shipped_roots():
        shipped = _read_finished(root)
        if shipped is not None and shipped.report.get("recipe_hash") == wanted:
            return shipped
    return None


def model_inputs(recipe: dict, name: str) -> dict:
    """Everything one model's build reads: the recipe (as JSON data) without the other model.

    Two worlds that differ only in the policy share the expert: its SFT data, seed and
    schedule do not depend on the policy's recipe (``make_datasets`` draws each model's data
    from its own seeds).
    """
    other = "policy" if name == "expert" else "expert"
    return json.loads(json.dumps({key: value for key, value in hashed_form(recipe).items() if key != other}))


def _built_model(name: str, recipe: ToyWorldRecipe, cache_root: Path) -> ToyWorld | None:
    """A finished world (shipped first, then cached) whose ``name`` model was built from the
    same inputs as ``recipe``'s: copying it gives the same model as training it, and the
    shipped copy is the same on every machine (training is not, across CPUs)."""
    wanted = model_inputs(dataclasses.asdict(recipe), name)
    candidates = shipped_roots()
    if cache_root.is_dir():
        candidates += sorted(path for path in cache_root.iterdir() if path.is_dir())
    for root in candidates:
        world = _read_finished(root)
        if world is not None and "recipe" in world.report and model_inputs(world.report["recipe"], name) == wanted:
            return world
    return None


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root except the manifest, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE and "__pycache__" not in path.parts
    }


def ship_world(world: ToyWorld, destination: Path = SHIPPED_ROOT) -> Path:
    """Copy a finished build into the package folder and write its manifest."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(world.root, destination)
    digests = file_digests(destination)
    (destination / MANIFEST_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in digests.items()))
    return destination


def _read_finished(root: Path) -> ToyWorld | None:
    report_path = root / REPORT_FILE
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text())
    except json.JSONDecodeError:
        return None
    return ToyWorld.at(root, report)


def _write_jsonl(path: Path, problems: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps({"problem_id": p["problem_id"], "problem": p["problem"], "answer": p["answer"]}) + "\n" for p in problems)


def make_datasets(recipe: ToyWorldRecipe) -> dict[str, list[dict]]:
    """RL train and eval prompts, plus each model's SFT data, all disjoint from eval and train.

    Seeds are derived from the recipe seed so each set is reproducible on its own.
    """
    base = recipe.seed * 1000
    eval_set = generate_problems(recipe.eval_problems, base + 1, recipe.rl_difficulty, id_prefix="toy-eval")
    eval_texts = {p["problem"] for p in eval_set}
    # Drawn with margin, then trimmed: some draws repeat an eval problem and are dropped.
    train_candidates = generate_problems(2 * recipe.train_problems, base + 2, recipe.rl_difficulty, id_prefix="toy-train")
    train_set = [p for p in train_candidates if p["problem"] not in eval_texts][: recipe.train_problems]
    held_out = eval_texts | {p["problem"] for p in train_set}
    sft_sets = {}
    for offset, (name, model) in enumerate((("expert", recipe.expert), ("policy", recipe.policy)), start=3):
        candidates = generate_problems(
            recipe.sft_problems, base + offset, recipe.sft_difficulty,
            op_weights={"+": 1.0, "-": 1.0, "*": model.multiply_weight}, id_prefix=f"toy-sft-{name}",
        )
        swap_rng, truncation_rng = random.Random(base + 20 + offset), random.Random(base + 10 + offset)
        # Their own streams, drawn only when used: worlds without these habits keep their data.
        boundary_rng, separator_rng = random.Random(base + 30 + offset), random.Random(base + 40 + offset)
        habits_rng = random.Random(base + 50 + offset)
        sft_sets[name] = []
        for p in candidates:
            if p["problem"] in held_out:
                continue
            if model.writes_habits:
                sft_sets[name].append({**p, "solution": write_with_habits(
                    p["problem"], habits_rng, model.slip_rate, model.checks_products, model.filler_rate)})
                continue
            solution = swap_operands(p["solution"], swap_rng, model.swap_rate)
            if truncation_rng.random() < model.early_stop_rate:
                solution = stop_one_step_early(solution)
            if model.boundary_stop_rate > 0:
                solution = stop_at_a_boundary(solution, boundary_rng, model.boundary_stop_rate)
            if model.varied_separators:
                solution = vary_separators(solution, separator_rng)
            sft_sets[name].append({**p, "solution": solution})
    return {"train": train_set, "eval": eval_set, "sft_expert": sft_sets["expert"], "sft_policy": sft_sets["policy"]}


def _build(root: Path, recipe: ToyWorldRecipe, log: Callable[[str], None], cache_root: Path | None = None) -> ToyWorld:
    # Heavy imports here, so reading a cached world stays fast and light.
    import torch

    # The caller's thread setting is restored after the build.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        return _build_with_torch(root, recipe, log, cache_root)
    finally:
        torch.set_num_threads(previous_threads)


def _build_with_torch(root: Path, recipe: ToyWorldRecipe, log: Callable[[str], None], cache_root: Path | None) -> ToyWorld:
    from mentor_ray.toy_world.tokenizer import save_toy_tokenizer

    started = time.perf_counter()
    world = ToyWorld.at(root, report={})
    root.mkdir(parents=True)
    log(f"[toy-world] building {root} (recipe {recipe.digest()})")
    tokenizer = save_toy_tokenizer(world.tokenizer_dir, recipe.word_tokens)
    datasets = make_datasets(recipe)
    _write_jsonl(world.train_path, datasets["train"])
    _write_jsonl(world.eval_path, datasets["eval"])
    report: dict = {"recipe_hash": recipe.digest(), "recipe": dataclasses.asdict(recipe), "vocab_size": len(tokenizer)}
    for offset, (name, model_recipe, directory) in enumerate(
        (("expert", recipe.expert, world.expert_dir), ("policy", recipe.policy, world.policy_dir)), start=1
    ):
        source = _built_model(name, recipe, cache_root) if cache_root is not None else None
        if source is not None:
            shutil.copytree(source.root / name, directory)
            report[name] = {**source.report[name], "copied_from_world": source.report["recipe_hash"]}
            log(f"[toy-world] {name}: copied from world {source.report['recipe_hash']} (same build inputs)")
            continue
        report[name] = _train_and_save(
            name, model_recipe, recipe, tokenizer, datasets[f"sft_{name}"], datasets["eval"],
            directory, seed=recipe.seed * 1000 + offset, log=log,
        )
    report["build_seconds"] = round(time.perf_counter() - started, 1)
    for name in ("expert", "policy"):
        r = report[name]
        log(
            f"[toy-world] {name}: greedy acc {r['greedy_accuracy']:.3f} (stops early {r['greedy_early_stop_rate']:.3f}, "
            f"acc when finished {r['greedy_accuracy_when_finished'] or 0.0:.3f}), sampled@T=1 acc {r['sampled_accuracy']:.3f} "
            f"(stops early {r['sampled_early_stop_rate']:.3f}), "
            f"format greedy {r['greedy_format_rate']:.3f} / sampled {r['sampled_format_rate']:.3f}"
        )
    log(f"[toy-world] built in {report['build_seconds']:.0f}s: {root}")
    # Last, and atomically: its presence marks the build as finished.
    temporary = root / (REPORT_FILE + ".tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(root / REPORT_FILE)
    # Read back, so a fresh build and a cache hit return identical (JSON-typed) reports.
    return ToyWorld.at(root, json.loads((root / REPORT_FILE).read_text()))


def _train_and_save(name, model_recipe: ModelRecipe, recipe: ToyWorldRecipe, tokenizer, sft_data, eval_set, directory: Path, seed: int, log) -> dict:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from mentor_ray.habits import habit_rates
    from mentor_ray.toy_world.evaluate import (
        early_stop_rate,
        generate_responses,
        score_responses,
        stops_early,
    )
    from mentor_ray.toy_world.sft import SFTConfig, train_sft

    started = time.perf_counter()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=model_recipe.hidden_size,
        num_hidden_layers=model_recipe.num_layers,
        num_attention_heads=model_recipe.num_attention_heads,
        num_key_value_heads=model_recipe.num_key_value_heads,
        intermediate_size=model_recipe.intermediate_size,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    if model_recipe.head_dim not in (32, 64, 80, 96, 112, 128):
        raise ValueError(f"{name}: head_dim {model_recipe.head_dim} is not one vLLM's CPU attention supports")
    model = Qwen2ForCausalLM(config)
    sft = SFTConfig(steps=model_recipe.sft_steps, batch_size=model_recipe.batch_size, learning_rate=model_recipe.learning_rate)
    losses = train_sft(model, tokenizer, sft_data, sft, seed=seed, log=log, name=name)
    train_seconds = time.perf_counter() - started
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))

    problems = [p["problem"] for p in eval_set]
    answers = [p["answer"] for p in eval_set]
    greedy_responses = generate_responses(model, tokenizer, problems, temperature=0.0)
    sampled_responses = generate_responses(model, tokenizer, problems, temperature=1.0, seed=seed)
    greedy, sampled = score_responses(greedy_responses, answers), score_responses(sampled_responses, answers)

    finished = [(r, a) for r, a, p in zip(greedy_responses, answers, problems) if not stops_early(r, p)]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "sft_problems": len(sft_data),
        "sft_final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "sft_seconds": round(train_seconds, 1),
        "greedy_accuracy": greedy.accuracy,
        "greedy_format_rate": greedy.format_rate,
        "sampled_accuracy": sampled.accuracy,
        "sampled_format_rate": sampled.format_rate,
        # The policy's designed weakness, and what it could reach without it.
        "greedy_early_stop_rate": 1.0 - len(finished) / len(problems),
        "sampled_early_stop_rate": early_stop_rate(sampled_responses, problems),
        "greedy_accuracy_when_finished": score_responses(*zip(*finished)).accuracy if finished else None,
        # Occurrences per sampled response of each mentor_ray.habits word (the habits world's).
        "sampled_habits": habit_rates(sampled_responses),
        "eval_seconds": round(time.perf_counter() - started - train_seconds, 1),
    }
