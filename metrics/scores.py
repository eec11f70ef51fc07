"""Scores for generated answers against references, and answer-only perplexity.

Text scores are pure functions (no model); `answer_perplexity` runs a causal LM on encoded examples
with exactly the training mask (`medchat.core.prompting.encode_example`: prompt tokens -100, answer + EOS kept).

Conventions (all recorded in the report):
- ROUGE-1/2/L: `rouge_score` F-measure with the Porter stemmer, averaged over examples (0-1).
- BLEU: sacreBLEU corpus BLEU with its default settings (13a tokenizer, 0-100); per example: sentence BLEU.
- token F1: SQuAD-style: lower-case, punctuation and articles removed, bag-of-tokens overlap (0-1).
- set F1 (seed): the seed notebook's variant: lower-cased whitespace tokens as *sets* (duplicates ignored,
  punctuation kept). Shown labelled so our numbers can be read next to the seed's.
- perplexity: exp(total answer-token NLL / total answer tokens) over the data set (token-weighted).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

# Higher is better for every text score; lower is better for perplexity.
TEXT_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "token_f1", "set_f1")
ALL_METRICS = TEXT_METRICS + ("perplexity",)
LOWER_IS_BETTER = frozenset({"perplexity"})
METRIC_LABELS = {
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "bleu": "BLEU",
    "token_f1": "token F1",
    "set_f1": "set F1 (seed)",
    "perplexity": "perplexity",
}

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


# --------------------------------------------------------------------------- token F1


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop articles, squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over the normalised bag of tokens (multiset overlap)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred)
    recall = overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def set_f1(prediction: str, reference: str) -> float:
    """The seed notebook's F1: sets of lower-cased whitespace tokens (no punctuation stripping)."""
    pred = set(prediction.lower().split())
    ref = set(reference.lower().split())
    common = pred & ref
    if not common:
        return 0.0
    precision = len(common) / len(pred)
    recall = len(common) / len(ref)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- ROUGE / BLEU

_ROUGE_SCORER = None


def _rouge_scorer():
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return _ROUGE_SCORER


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (stemmed) for one pair."""
    scores = _rouge_scorer().score(reference, prediction)  # rouge_score takes (target, prediction)
    return {name: scores[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}


def sentence_bleu(prediction: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def score_pair(prediction: str, reference: str) -> dict[str, float]:
    """Every text score for one prediction."""
    out = rouge(prediction, reference)
    out["bleu"] = sentence_bleu(prediction, reference)
    out["token_f1"] = token_f1(prediction, reference)
    out["set_f1"] = set_f1(prediction, reference)
    return out


def aggregate(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Data-set level text scores: ROUGE and F1s are means over examples, BLEU is corpus BLEU."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    n = len(predictions)
    if n == 0:
        return {name: float("nan") for name in TEXT_METRICS}
    per = [score_pair(p, r) for p, r in zip(predictions, references)]
    out = {name: sum(s[name] for s in per) / n for name in ("rouge1", "rouge2", "rougeL", "token_f1", "set_f1")}
    out["bleu"] = corpus_bleu(predictions, references)
    return out


def relative_change(base: float | None, tuned: float | None) -> float | None:
    """(tuned - base) / base, or None when it is undefined."""
    if base is None or tuned is None:
        return None
    if any(isinstance(v, float) and math.isnan(v) for v in (base, tuned)) or base == 0:
        return None
    return (tuned - base) / abs(base)


def is_improvement(metric: str, base: float | None, tuned: float | None) -> bool | None:
    if base is None or tuned is None or tuned == base:
        return None
    return tuned < base if metric in LOWER_IS_BETTER else tuned > base


# --------------------------------------------------------------------------- perplexity


@dataclass
class PerplexityResult:
    perplexity: float
    nll_sum: float
    n_tokens: int
    per_example: list[dict[str, Any]] = field(default_factory=list)  # {"nll", "tokens", "perplexity", "truncated"}


def example_nll(model, input_ids: list[list[int]], labels: list[list[int]], pad_id: int) -> list[tuple[float, int]]:
    """Summed NLL and number of scored tokens per sequence (labels -100 are ignored), one forward pass."""
    import torch

    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    lab = torch.full((len(input_ids), width), -100, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(input_ids, labels)):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    shift_logits = logits[:, :-1, :]
    shift_labels = lab[:, 1:].to(device)
    losses = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(shift_labels.shape)
    scored = shift_labels != -100
    return [(float(losses[i][scored[i]].sum()), int(scored[i].sum())) for i in range(len(input_ids))]


def answer_perplexity(
    model,
    tokenizer,
    pairs: Iterable[tuple[str, str]],
    *,
    style: str = "chat",
    system: str | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    max_batch_tokens: int = 2048,
    on_batch: Callable[[list[int], list[dict[str, Any]]], None] | None = None,
) -> PerplexityResult:
    """Perplexity of the reference answers given their questions, masked exactly as in training.

    `on_batch(indices, rows)` hears each finished batch (evaluate caches it, so an interruption loses one batch)."""
    from medchat.core.prompting import encode_example

    kwargs: dict[str, Any] = {"style": style, "max_length": max_length}
    if system is not None:
        kwargs["system"] = system
    encoded = [encode_example(tokenizer, q, a, **kwargs) for q, a in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    per: list[dict[str, Any] | None] = [None] * len(encoded)
    try:
        for chunk in token_budget_batches([len(e.input_ids) for e in encoded], max_batch_tokens, batch_size):
            items = [encoded[i] for i in chunk]
            for index, enc, (nll, n) in zip(
                chunk, items, example_nll(model, [e.input_ids for e in items], [e.labels for e in items], pad_id)
            ):
                per[index] = {"nll": nll, "tokens": n, "perplexity": _safe_exp(nll / n) if n else float("nan"),
                              "truncated": bool(enc.truncated)}
            if on_batch:
                on_batch(chunk, [per[i] for i in chunk])
    finally:
        if was_training:
            model.train()
    return perplexity_from_examples([p for p in per if p is not None])


def token_budget_batches(lengths: list[int], max_batch_tokens: int | None,
                         batch_size: int | None = None) -> list[list[int]]:
    """Indices grouped by length so that rows x padded width stays under the budget (and rows under
    batch_size): the logits (rows x width x vocabulary) are the memory peak of a scoring pass. Used for every
    batch the metrics make (generation, perplexity, multiple choice)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # sorted ascending: the newest row is the widest
        full = batch_size is not None and len(current) >= batch_size
        over = max_batch_tokens is not None and (len(current) + 1) * width > max_batch_tokens
        if current and (full or over):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def perplexity_from_examples(per: list[dict[str, Any]]) -> PerplexityResult:
    nll_sum = sum(p["nll"] for p in per)
    n_tokens = sum(p["tokens"] for p in per)
    ppl = _safe_exp(nll_sum / n_tokens) if n_tokens else float("nan")
    return PerplexityResult(perplexity=ppl, nll_sum=nll_sum, n_tokens=n_tokens, per_example=per)


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")
