"""Answer-only perplexity against a manual computation of the masked loss on the tiny model."""

from __future__ import annotations

import math

import pytest

PAIRS = [
    ("What are the symptoms of diabetes?", "Thirst, frequent urination and fatigue."),
    ("How does aspirin work?", "It blocks cyclooxygenase."),
    ("What fights bacteria?", "White blood cells and antibodies fight bacteria in the immune system."),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _manual_nll(model, input_ids, labels):
    """Sum over answer positions t of -log p(token_t | tokens_<t), one token at a time."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    total, n = 0.0, 0
    for t in range(1, len(input_ids)):
        if labels[t] == -100:
            continue
        total -= float(logp[t - 1, labels[t]])
        n += 1
    return total, n


def test_perplexity_matches_manual_masked_loss(tiny):
    import torch

    from medchat.core.prompting import encode_example
    from metrics.scores import answer_perplexity

    model, tok = tiny
    result = answer_perplexity(model, tok, PAIRS, style="chat", batch_size=2)  # batches mix lengths -> padding

    total, count = 0.0, 0
    for (q, a), per in zip(PAIRS, result.per_example):
        enc = encode_example(tok, q, a, style="chat")
        assert enc.answer_tokens > 0
        nll, n = _manual_nll(model, enc.input_ids, enc.labels)
        # only the answer (+ EOS) is scored, never the prompt
        assert n == sum(1 for x in enc.labels if x != -100)
        assert n < len(enc.input_ids)
        assert per["tokens"] == n
        assert per["nll"] == pytest.approx(nll, rel=1e-4)
        # and the transformers masked mean agrees for this single example
        with torch.no_grad():
            hf = model(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels])).loss
        assert per["perplexity"] == pytest.approx(math.exp(float(hf)), rel=1e-4)
        total += nll
        count += n

    assert result.n_tokens == count
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-4)
    # a random tiny model is close to uniform over its vocabulary
    assert 0.3 * len(tok) < result.perplexity < 3 * len(tok)


def test_token_budget_batching_keeps_order_and_values(tiny):
    from metrics.scores import answer_perplexity

    model, tok = tiny
    whole = answer_perplexity(model, tok, PAIRS, batch_size=8)
    one_by_one = answer_perplexity(model, tok, PAIRS, batch_size=8, max_batch_tokens=1)  # forces single rows
    assert [p["tokens"] for p in whole.per_example] == [p["tokens"] for p in one_by_one.per_example]
    for a, b in zip(whole.per_example, one_by_one.per_example):
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-4)
    assert whole.perplexity == pytest.approx(one_by_one.perplexity, rel=1e-4)
