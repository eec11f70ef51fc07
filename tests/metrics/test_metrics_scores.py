"""Scores against values computed by hand on small strings."""

from __future__ import annotations

import math

import pytest

from metrics import scores


def test_token_f1_squad_normalisation():
    # normalised: "cat sat on mat" vs "cat sat on hat" -> 3 common of 4 and 4
    assert scores.token_f1("The cat sat on the mat.", "A cat sat on a hat") == pytest.approx(0.75)
    assert scores.token_f1("Fever.", "fever") == 1.0
    assert scores.token_f1("", "") == 1.0
    assert scores.token_f1("", "fever") == 0.0
    assert scores.token_f1("nausea", "fever") == 0.0


def test_token_f1_counts_duplicates_but_set_f1_does_not():
    pred, ref = "aspirin aspirin blocks", "aspirin blocks cox"
    # bag: overlap 2 (aspirin once, blocks once); p = 2/3, r = 2/3
    assert scores.token_f1(pred, ref) == pytest.approx(2 / 3)
    # sets: {aspirin, blocks} vs {aspirin, blocks, cox}; p = 1, r = 2/3 -> 0.8
    assert scores.set_f1(pred, ref) == pytest.approx(0.8)


def test_set_f1_is_the_seeds_whitespace_variant():
    # punctuation is kept and case is folded, as in the seed notebook
    assert scores.set_f1("Fever.", "fever") == 0.0
    assert scores.set_f1("FEVER and chills", "fever and chills") == 1.0


def test_rouge_by_hand():
    r = scores.rouge("the cat sat on the mat", "the cat is on the mat")
    assert r["rouge1"] == pytest.approx(5 / 6)  # the x2, cat, on, mat
    assert r["rouge2"] == pytest.approx(3 / 5)  # the-cat, on-the, the-mat of 5 bigrams each
    assert r["rougeL"] == pytest.approx(5 / 6)  # LCS "the cat on the mat"


def test_rouge_uses_stemming():
    assert scores.rouge("running fast", "runs fast")["rouge1"] == pytest.approx(1.0)


def test_bleu_by_hand():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2; equal length so no brevity penalty
    assert scores.sentence_bleu("the quick brown fox jumps", "the quick brown fox leaps") == pytest.approx(
        100 * 0.2**0.25, abs=1e-6
    )
    # all precisions 1, hypothesis 4 tokens vs reference 5: BP = exp(1 - 5/4)
    assert scores.sentence_bleu("the quick brown fox", "the quick brown fox jumps") == pytest.approx(
        100 * math.exp(-0.25), abs=1e-6
    )


def test_corpus_bleu_pools_counts():
    preds = ["the quick brown fox jumps", "the quick brown fox"]
    refs = ["the quick brown fox leaps", "the quick brown fox"]
    expected = 100 * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert scores.corpus_bleu(preds, refs) == pytest.approx(expected, abs=1e-6)


def test_aggregate_means_and_corpus_bleu():
    preds = ["the cat sat on the mat", "fever"]
    refs = ["the cat is on the mat", "fever"]
    agg = scores.aggregate(preds, refs)
    assert agg["rouge1"] == pytest.approx((5 / 6 + 1) / 2)
    assert agg["token_f1"] == pytest.approx((0.75 + 1) / 2)
    assert agg["bleu"] == pytest.approx(scores.corpus_bleu(preds, refs))
    with pytest.raises(ValueError):
        scores.aggregate(["a"], [])


def test_relative_change_and_direction():
    assert scores.relative_change(0.2, 0.25) == pytest.approx(0.25)
    assert scores.relative_change(0.0, 0.1) is None
    assert scores.relative_change(None, 0.1) is None
    assert scores.is_improvement("rougeL", 0.2, 0.3) is True
    assert scores.is_improvement("perplexity", 20.0, 15.0) is True
    assert scores.is_improvement("perplexity", 15.0, 20.0) is False
    assert scores.is_improvement("bleu", 3.0, 3.0) is None
