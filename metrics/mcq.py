"""Multiple-choice accuracy scored as lm-evaluation-harness scores it, base and fine-tuned in one pass over the data.

For each question, each option's continuation (" A", " yes", ...) is scored by its summed log-likelihood after
the prompt; `acc` is right when the best option is the answer, `acc_norm` divides each log-likelihood by the
option's length in characters first (lm-eval's definition). Standard errors are lm-eval's: sample standard
deviation / sqrt(n).

Tokenisation follows lm-eval's `_encode_pair`: trailing spaces of the prompt move to the continuation, the
prompt and prompt + continuation are encoded, and the continuation's tokens are what the latter has past the
former's length. The scored sequence is prompt tokens + continuation tokens (no chat template).

Speed: the options of one question share their prompt, so it is encoded once. When every option is one token
(letters, yes/no/maybe for most tokenizers) one forward pass over the prompt scores all options: prompts of many
questions go in one right-padded batch, and only the logits of each prompt's last position are computed. When an
option has several tokens, the prompt's KV cache is computed once and repeated for the options' tokens.
`score_one_option_at_a_time` is the naive way, kept for comparison.

The per-question file holds line numbers, log-likelihoods and predictions, not the questions: the data file
(recorded with its SHA-256) has those, and a result shipped with the project must not copy a data set.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medchat.core.fileio import file_sha256, json_finite, write_text_atomic
from medchat.core.runs import MCQ_PREFIX, library_versions
from medchat.core.tokens import context_length
from metrics.bootstrap import BootstrapConfig, paired_mean, resample_counts
from metrics.mcq_tasks import (
    DEFAULT_FEWSHOT_SEED,
    FewshotPlan,
    Question,
    TaskError,
    TaskSpec,
    build_context,
    choose_shots,
    continuations,
    load_questions,
    resolve_task,
)
from metrics.scores import token_budget_batches

SCHEMA_VERSION = 1
MODELS = ("base", "finetuned")
DEFAULT_MAX_BATCH_TOKENS = 4096


@dataclass
class Request:
    """One question: the shared prompt tokens and each option's continuation tokens."""

    context: list[int]
    options: list[list[int]]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` for causal models."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    return ctx, whole[len(ctx):]


def build_requests(tokenizer, contexts: list[str], conts: list[list[str]]) -> list[Request]:
    out = []
    for ctx_text, options in zip(contexts, conts):
        pairs = [encode_pair(tokenizer, ctx_text, c) for c in options]
        ctx = pairs[0][0]
        if any(p[0] != ctx for p in pairs) or any(not p[1] for p in pairs):
            raise TaskError("an option encodes to no tokens or changes the prompt's tokens; check the task's choices.")
        out.append(Request(ctx, [p[1] for p in pairs]))
    return out


def _max_length(model) -> int:
    return context_length(getattr(model.config, "max_position_embeddings", None))


def _device(model):
    return next(model.parameters()).device


def _single_token_batches(reqs: list[tuple[int, Request]], max_batch_tokens: int) -> list[list[tuple[int, Request]]]:
    """Sorted by prompt length so a batch pads little; rows x width stays under the budget."""
    chunks = token_budget_batches([len(req.context) for _, req in reqs], max_batch_tokens)
    return [[reqs[i] for i in chunk] for chunk in chunks]


def score_requests(model, requests: list[Request], *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                   progress: Callable[[int, int], None] | None = None) -> list[list[float]]:
    """Log-likelihood of every option of every request (prompt encoded once per question)."""
    import torch

    device = _device(model)
    limit = _max_length(model)
    out: list[list[float] | None] = [None] * len(requests)
    single = [(i, r) for i, r in enumerate(requests) if all(len(o) == 1 for o in r.options)]
    multi = [(i, r) for i, r in enumerate(requests) if not all(len(o) == 1 for o in r.options)]
    done = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _single_token_batches(single, max_batch_tokens):
                ctxs = [r.context[-limit:] for _, r in batch]
                width = max(len(c) for c in ctxs)
                # Right padding without a mask is exact: under the causal mask no real token sees a pad.
                ids = torch.zeros((len(ctxs), width), dtype=torch.long)
                for row, c in enumerate(ctxs):
                    ids[row, : len(c)] = torch.tensor(c)
                last = torch.tensor([[len(c) - 1] for c in ctxs])
                logits = model(input_ids=ids.to(device), logits_to_keep=last.to(device), use_cache=False).logits
                logprobs = torch.log_softmax(logits[:, -1, :].float(), dim=-1).cpu()
                for row, (i, r) in enumerate(batch):
                    out[i] = [float(logprobs[row, o[0]]) for o in r.options]
                done += len(batch)
                if progress:
                    progress(done, len(requests))
            for i, r in multi:
                out[i] = _score_shared_prefix(model, r, limit, device)
                done += 1
                if progress:
                    progress(done, len(requests))
    finally:
        if was_training:
            model.train()
    return [o for o in out if o is not None]


def _score_shared_prefix(model, r: Request, limit: int, device) -> list[float]:
    """Prompt once with its KV cache; the cache repeated for the options, which run right-padded in one batch."""
    import torch

    longest = max(len(o) for o in r.options)
    ctx = r.context[-max(1, limit - longest + 1):]  # lm-eval keeps the last max_length + 1 tokens
    first = model(input_ids=torch.tensor([ctx], device=device), use_cache=True, logits_to_keep=1)
    first_lp = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
    rest = [o[:-1] for o in r.options]
    n_rest = max(len(t) for t in rest)
    scores = [float(first_lp[o[0]]) for o in r.options]
    if n_rest == 0:
        return scores
    cache = first.past_key_values
    cache.batch_repeat_interleave(len(r.options))
    ids = torch.zeros((len(r.options), n_rest), dtype=torch.long)
    for row, t in enumerate(rest):
        ids[row, : len(t)] = torch.tensor(t, dtype=torch.long)
    logits = model(input_ids=ids.to(device), past_key_values=cache, use_cache=True).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    for row, o in enumerate(r.options):
        for j in range(1, len(o)):
            scores[row] += float(logprobs[row, j - 1, o[j]])
    return scores


def score_one_option_at_a_time(model, requests: list[Request]) -> list[list[float]]:
    """The naive way (what the speed bench compares against): one forward pass per (question, option)."""
    import torch

    device = _device(model)
    out = []
    with torch.inference_mode():
        for r in requests:
            lls = []
            for o in r.options:
                seq = (r.context + o)[-(_max_length(model) + 1):][:-1]
                logits = model(input_ids=torch.tensor([seq], device=device), use_cache=False).logits[0].float()
                lp = torch.log_softmax(logits[-len(o):], dim=-1)
                lls.append(float(sum(lp[j, tok] for j, tok in enumerate(o))))
            out.append(lls)
    return out


# --------------------------------------------------------------------------- accuracy


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # first of ties, as numpy.argmax


def predictions(lls: list[float], labels: list[str]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction): lm-eval divides by the choice's length in characters."""
    return argmax(lls), argmax([ll / len(label) for ll, label in zip(lls, labels)])


def mean_stderr(values: list[float]) -> float:
    """lm-eval's mean_stderr: sample standard deviation / sqrt(n)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def baselines(questions: list[Question]) -> dict[str, Any]:
    """Chance (mean of 1/options) and majority class (always the most frequent answer of this data)."""
    chance = sum(1.0 / len(q.labels) for q in questions) / len(questions)
    counts = Counter(q.gold_label for q in questions)
    label, hits = counts.most_common(1)[0]
    return {"chance": chance, "majority": hits / len(questions), "majority_label": label,
            "answer_counts": dict(sorted(counts.items()))}


def summarize(rows: list[dict[str, Any]], config: BootstrapConfig, base_lines: dict[str, Any]) -> dict[str, Any]:
    """Accuracies, standard errors, the 'within two standard errors of chance' flag and paired intervals."""
    out: dict[str, Any] = {}
    for which in MODELS:
        agg: dict[str, Any] = {}
        for metric in ("acc", "acc_norm"):
            values = [float(r[which][metric]) for r in rows]
            agg[metric] = sum(values) / len(values)
            agg[f"{metric}_stderr"] = mean_stderr(values)
        se = agg["acc_stderr"]
        agg["near_chance"] = bool(not math.isnan(se) and abs(agg["acc"] - base_lines["chance"]) <= 2 * se)
        out[which] = agg
    counts = resample_counts(len(rows), config)
    out["intervals"] = {
        metric: paired_mean([float(r["base"][metric]) for r in rows], [float(r["finetuned"][metric]) for r in rows],
                            config, counts=counts)
        for metric in ("acc", "acc_norm")
    }
    return out


# --------------------------------------------------------------------------- running


@dataclass
class McqSummary:
    results_path: Path
    examples_path: Path
    results: dict[str, Any]


ProgressFn = Callable[[str, int, int], None]


def results_path(out_dir: Path, task: str) -> Path:
    return Path(out_dir) / f"{MCQ_PREFIX}{_safe(task)}.json"


def examples_path(out_dir: Path, task: str) -> Path:
    return Path(out_dir) / f"{MCQ_PREFIX}{_safe(task)}.examples.jsonl"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass
class McqPlan:
    """The questions of one task with their prompts (shots included) and continuations, ready to score."""

    spec: TaskSpec
    data: Path
    questions: list[Question]
    shots: list[list[Question]]
    contexts: list[str]
    continuations: list[list[str]]
    fewshot: FewshotPlan


def plan_mcq(task: str | TaskSpec, data: Path | None, *, fewshot_data: Path | None, num_fewshot: int | None,
             fewshot_seed: int, fewshot_sampler: str | None, limit: int | None) -> McqPlan:
    """Read and check the rows, choose the shots (seeded), write every prompt."""
    spec = task if isinstance(task, TaskSpec) else resolve_task(task)
    data = Path(data) if data else spec.defaults.get("data")
    if data is None:
        raise TaskError(f"Task {spec.name} needs --data FILE.jsonl (no data file is named in its task file).")
    fewshot_data = Path(fewshot_data) if fewshot_data else spec.defaults.get("fewshot_data")
    k = num_fewshot if num_fewshot is not None else int(spec.defaults.get("num_fewshot", 5 if fewshot_data else 0))
    if k < 0:
        raise TaskError("--num-fewshot must be 0 or more.")
    if k and fewshot_data is None:
        raise TaskError(f"{k}-shot needs --fewshot-data FILE.jsonl (the shots come from a separate file).")
    questions = load_questions(spec, data, limit)
    same_file = bool(fewshot_data) and Path(fewshot_data).resolve() == Path(data).resolve()
    pool = load_questions(spec, fewshot_data) if (k and fewshot_data) else []
    fewshot = FewshotPlan(k=k, path=Path(fewshot_data) if (k and fewshot_data) else None, seed=fewshot_seed,
                          sampler=fewshot_sampler or spec.sampler, same_file=same_file)
    shots = choose_shots(spec, questions, pool, fewshot)
    return McqPlan(spec, Path(data), questions, shots, [build_context(spec, q, s) for q, s in zip(questions, shots)],
                   [continuations(spec, q) for q in questions], fewshot)


def score_models(plan: McqPlan, target, *, max_batch_tokens: int, device: str, dtype: str, quantization: str,
                 progress: ProgressFn | None) -> tuple[dict[str, list[list[float]]], dict[str, Any], dict[str, Any], int]:
    """(log-likelihoods, timing, model info, prompt tokens): each model loaded in turn, scored, dropped."""
    from medchat.core.model import ModelError, load

    from metrics.evaluate import _model_spec

    lls: dict[str, list[list[float]]] = {}
    timing: dict[str, Any] = {}
    model_infos: dict[str, Any] = {}
    n_tokens = 0
    for which in MODELS:
        try:
            loaded = load(_model_spec(target, which, device, dtype, quantization))
        except ModelError as exc:
            raise TaskError(f"Loading the {which} model failed: {exc}") from exc
        model_infos[which] = loaded.info.as_dict()
        requests = build_requests(loaded.tokenizer, plan.contexts, plan.continuations)
        n_tokens = sum(len(r.context) for r in requests)
        t0 = time.perf_counter()
        lls[which] = score_requests(loaded.model, requests, max_batch_tokens=max_batch_tokens,
                                    progress=(lambda d, t, w=which: progress(w, d, t)) if progress else None)
        seconds = time.perf_counter() - t0
        n = len(plan.questions)
        timing[which] = {"score_s": round(seconds, 3), "rows_per_s": round(n / seconds, 2) if seconds else None,
                         "load_s": loaded.info.load_seconds,
                         "single_token_options": sum(1 for r in requests if all(len(o) == 1 for o in r.options))}
        loaded = None
        gc.collect()
    return lls, timing, model_infos, n_tokens


def question_rows(plan: McqPlan, lls: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    """Per question: its line, gold answer, shots' lines and each model's log-likelihoods and predictions."""
    rows = []
    for i, q in enumerate(plan.questions):
        row: dict[str, Any] = {"index": i, "line": q.line, "gold": q.gold_label,
                               "labels": q.labels, "shots": [s.line for s in plan.shots[i]]}
        if q.subject:
            row["subject"] = q.subject
        for which in MODELS:
            pred, pred_norm = predictions(lls[which][i], q.labels)
            row[which] = {"loglikelihoods": lls[which][i], "prediction": q.labels[pred],
                          "prediction_norm": q.labels[pred_norm],
                          "acc": int(pred == q.gold), "acc_norm": int(pred_norm == q.gold)}
        rows.append(row)
    return rows


SCORING = ("lm-eval multiple_choice: summed log-likelihood of ' ' + choice after the prompt, no chat template; "
           "acc_norm divides by the choice's length in characters")


def run_mcq(
    target,
    task: str | TaskSpec,
    data: Path | None = None,
    *,
    fewshot_data: Path | None = None,
    num_fewshot: int | None = None,
    fewshot_seed: int = DEFAULT_FEWSHOT_SEED,
    fewshot_sampler: str | None = None,
    limit: int | None = None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    bootstrap: BootstrapConfig | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "auto",
    progress: ProgressFn | None = None,
) -> McqSummary:
    """Score the base and the fine-tuned model of `target` (metrics.evaluate.Target) on one task; write the JSON."""
    from medchat.core.model import ModelError

    from metrics.evaluate import _resolved_runtime, adapter_fingerprint, target_record

    plan = plan_mcq(task, data, fewshot_data=fewshot_data, num_fewshot=num_fewshot, fewshot_seed=fewshot_seed,
                    fewshot_sampler=fewshot_sampler, limit=limit)
    bootstrap = bootstrap or BootstrapConfig()
    try:
        runtime = _resolved_runtime(device, dtype, quantization)
    except ModelError as exc:
        raise TaskError(str(exc)) from exc
    lls, timing, model_infos, n_tokens = score_models(plan, target, max_batch_tokens=max_batch_tokens, device=device,
                                                      dtype=dtype, quantization=quantization, progress=progress)
    rows = question_rows(plan, lls)
    base_lines = baselines(plan.questions)
    summary = summarize(rows, bootstrap, base_lines)
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "kind": "mcq", "task": plan.spec.name, "task_spec": plan.spec.as_dict(),
        **target_record(target, adapter_fingerprint(target.adapter)),
        "data": {"path": str(plan.data), "sha256": file_sha256(plan.data), "limit": limit},
        "n_examples": len(plan.questions), "fewshot": plan.fewshot.as_dict(), "scoring": SCORING,
        "engine": "medchat (prompt encoded once per question)", "prompt_tokens": n_tokens, "baselines": base_lines,
        "bootstrap": bootstrap.as_dict(), "runtime": runtime, "versions": library_versions("rouge_score", "sacrebleu"), "model_info": model_infos,
        "timing": timing, "notes": list(target.notes),
        "base": summary["base"], "finetuned": summary["finetuned"], "intervals": summary["intervals"],
    }
    out_dir = Path(target.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rpath, epath = results_path(out_dir, plan.spec.name), examples_path(out_dir, plan.spec.name)
    write_text_atomic(epath, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(rpath, json.dumps(json_finite(results), indent=2, ensure_ascii=False) + "\n")
    return McqSummary(rpath, epath, results)


__all__ = ["run_mcq", "score_requests", "score_one_option_at_a_time", "build_requests", "encode_pair",
           "predictions", "mean_stderr", "baselines", "summarize", "Request", "McqSummary",
           "TaskError"]
