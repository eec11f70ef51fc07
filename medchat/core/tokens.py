"""What a model and its tokenizer agree on: the usable context, the ids that end an answer, a pad token.
One answer for every backend (torch, llama.cpp), the trainer and the metrics."""

from __future__ import annotations

from typing import Any

FALLBACK_CONTEXT = 2048  # a model that states no limit (or an absurd one, as some tokenizers do)


def context_length(max_positions: Any, tokenizer: Any = None) -> int:
    """min(the model's max_position_embeddings, the tokenizer's model_max_length), ignoring unset values."""
    limits = [max_positions, getattr(tokenizer, "model_max_length", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else FALLBACK_CONTEXT


def eos_ids(tokenizer: Any, configured: Any = None) -> list[int]:
    """The tokenizer's EOS id and those of the generation config (one id or a list): a chat model often ends
    its turn with a token that is not the tokenizer's EOS."""
    ids = {tokenizer.eos_token_id}
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def ensure_pad_token(tokenizer: Any) -> Any:
    """Batched generation and training need a pad token; a model without one pads with EOS."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
