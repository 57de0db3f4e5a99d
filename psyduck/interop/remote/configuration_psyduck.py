"""PsyDuck's model configuration for Hugging Face `transformers` (written into an exported folder).

This file travels alone with the weights: it imports only `transformers`, never `psyduck`. Each
field is the PsyDuck `ModelConfig` field of the same name (see PsyDuck's psyduck/config.py), with
`d_ff` already resolved to the FFN's real width and `n_kv_head` to the real key/value head count.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class PsyDuckConfig(PretrainedConfig):
    """A PsyDuck GPT: positions, norm and FFN activation chosen per model, always pre-norm."""

    model_type = "psyduck"

    def __init__(
        self,
        vocab_size: int = 512,
        block_size: int = 128,
        d_model: int = 256,
        n_layer: int = 4,
        n_head: int = 8,
        n_kv_head: int = 8,
        d_ff: int = 1024,
        pos: str = "sinusoidal",  # sinusoidal | learned | rope
        norm: str = "layernorm",  # layernorm | rmsnorm
        activation: str = "relu",  # relu | gelu (tanh form) | relu2 (relu(x)²) | swiglu
        bias: bool = True,
        head_bias: bool = False,
        rope_theta: float = 10_000.0,
        norm_eps: float = 1e-5,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size, self.block_size, self.d_model = vocab_size, block_size, d_model
        self.n_layer, self.n_head, self.n_kv_head, self.d_ff = n_layer, n_head, n_kv_head, d_ff
        self.pos, self.norm, self.activation = pos, norm, activation
        self.bias, self.head_bias, self.rope_theta, self.norm_eps = bias, head_bias, rope_theta, norm_eps
        # the names generic `transformers` code looks for
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = d_model, n_layer, n_head
        self.max_position_embeddings = block_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
