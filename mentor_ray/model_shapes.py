"""The architecture facts a capacity plan needs (layers, widths, heads, vocabulary, tied
embeddings, positions) for a model named in a config: read from a local folder's config.json,
else from the table shipped beside this module (`model_shapes.json`: the recipes' models, since
no model hub is reachable). Only dense decoders of the Llama/Qwen2 kind are described.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mentor_ray.config import ConfigError

SHIPPED_SHAPES = Path(__file__).with_name("model_shapes.json")
# Families whose attention has q/k/v biases (Qwen2); the others (Llama, SmolLM2) have none.
QKV_BIAS_FAMILIES = ("qwen2",)


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    max_positions: int
    head_dim: int = 0  # 0: hidden // heads

    @property
    def head_width(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def layer_parameters(self) -> int:
        """One decoder layer: attention, gated MLP, two RMSNorms."""
        q_out, kv_out = self.heads * self.head_width, self.kv_heads * self.head_width
        attention = self.hidden * q_out + 2 * self.hidden * kv_out + q_out * self.hidden
        if self.family in QKV_BIAS_FAMILIES:
            attention += q_out + 2 * kv_out
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    def parameters(self) -> int:
        head = 0 if self.tied_embeddings else self.embedding_parameters()
        return self.embedding_parameters() + head + self.layers * self.layer_parameters() + self.hidden

    def largest_layer_parameters(self) -> int:
        """The largest single module's parameters (DeepSpeed's ZeRO-3 estimator gathers one)."""
        return max(self.embedding_parameters(), self.layer_parameters())

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Key and value cache of one token, all layers."""
        return 2 * self.layers * self.kv_heads * self.head_width * dtype_bytes


def shape_from_config_json(path: str | Path, name: str) -> ModelShape:
    data = json.loads(Path(path).read_text())
    data = data.get("text_config", data)
    try:
        heads = int(data["num_attention_heads"])
        return ModelShape(
            name=name,
            family=str(data.get("model_type", "llama")),
            layers=int(data["num_hidden_layers"]),
            hidden=int(data["hidden_size"]),
            intermediate=int(data["intermediate_size"]),
            heads=heads,
            kv_heads=int(data.get("num_key_value_heads") or heads),
            vocab=int(data["vocab_size"]),
            tied_embeddings=bool(data.get("tie_word_embeddings", False)),
            max_positions=int(data.get("max_position_embeddings") or 0),
            head_dim=int(data.get("head_dim") or 0),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: not a decoder config this plan can read ({error!r} missing or malformed)") from None


@cache
def shipped_shapes() -> dict[str, ModelShape]:
    table = json.loads(SHIPPED_SHAPES.read_text())
    return {name: ModelShape(name=name, **facts) for name, facts in table.items() if not name.startswith("_")}


def model_shape(reference: str, key: str) -> ModelShape:
    """The shape of the model a config key names: a local folder (or toy:// item) with a
    config.json, else a shipped entry by its hub name (case-insensitive)."""
    from mentor_ray.data.run_inputs import local_model_config

    config_json = local_model_config(reference)
    if config_json is not None:
        return shape_from_config_json(config_json, reference)
    by_name = {name.lower(): shape for name, shape in shipped_shapes().items()}
    shape = by_name.get(reference.strip().rstrip("/").lower())
    if shape is None:
        raise ConfigError(
            f"{key}={reference!r}: no config.json there and not a shipped architecture "
            f"({', '.join(sorted(shipped_shapes()))}); give a local model folder"
        )
    return shape
