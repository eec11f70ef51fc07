"""Base vs fine-tuned evaluation: batched generation through the shared engine, cached and resumable.

Models are loaded only with `medchat.core.model.load` and answers generated only with
`medchat.core.engine.Engine.generate_batch` (left padding). Every prediction is appended to a cache file
named after (base, adapter, generation settings, prompt) as soon as its batch finishes, keyed by the
question, so a rerun generates nothing and an interrupted evaluation resumes where it stopped.
Answer perplexities are cached the same way (they do not depend on the decoding settings).

Outputs in `<run>/eval/`: results.json (aggregates for "base" and "finetuned", settings, versions, probes),
examples.jsonl (per example: question, reference, both predictions, their scores and the deltas), cache/.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from medchat.core.errors import MedchatError
from medchat.core.fileio import file_sha256, json_finite, write_text_atomic
from medchat.core.runs import (EVAL_DIR, EXAMPLES_FILE, RESULTS_FILE, RunError, is_run_dir, library_versions, read_jsonl,
                               resolve_run, run_ref)
from metrics import scores

CACHE_VERSION = 1
SCHEMA_VERSION = 1
MODELS = ("base", "finetuned")

# The seed's qualitative probes: three in-domain questions and one out-of-domain question.
PROBES: list[tuple[str, str]] = [
    ("What are the common symptoms of type 2 diabetes?", "in_domain"),
    ("How does the immune system fight bacterial infections?", "in_domain"),
    ("What is the mechanism of action of aspirin?", "in_domain"),
    ("What is the capital of France?", "out_of_domain"),
]

# Evaluation decoding: greedy, and the same loop guards for BOTH models (they change the verdict).
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_REPETITION_PENALTY = 1.1
DEFAULT_NO_REPEAT_NGRAM = 4


class EvalError(MedchatError):
    """A user-facing evaluation problem; the message names the file and what to do."""


def default_settings(max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
                     no_repeat_ngram_size: int = DEFAULT_NO_REPEAT_NGRAM):
    from medchat.core.engine import GenerationSettings

    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                              repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)


# --------------------------------------------------------------------------- what to evaluate


@dataclass
class Example:
    question: str
    answer: str

    @property
    def gen_id(self) -> str:
        return _sha(self.question)[:20]

    @property
    def ppl_id(self) -> str:
        return _sha(self.question + "\x00" + self.answer)[:20]


@dataclass
class Target:
    adapter: Path
    base: str
    data_path: Path
    out_dir: Path
    prompt_style: str = "chat"
    system_prompt: str | None = None
    max_length: int = 512
    run_dir: Path | None = None
    run_id: str | None = None
    run_status: str | None = None
    notes: list[str] = field(default_factory=list)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalError(f"{path} should hold a JSON object.")
    return data


def resolve_target(
    ref: str | Path,
    *,
    base: str | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    allow_incomplete: bool = False,
) -> Target:
    """A run directory (or its adapter/ folder), a run id, or a bare adapter directory."""
    path = Path(ref).expanduser()
    if not path.exists():
        try:
            path = resolve_run(str(ref))
        except RunError as exc:
            raise EvalError(str(exc)) from exc
    if not path.is_dir():
        raise EvalError(f"{path} is not a directory: pass a run directory or a LoRA adapter directory.")
    if not is_run_dir(path) and is_run_dir(path.parent) and path.name == "adapter":
        path = path.parent
    if is_run_dir(path):
        return _run_target(path, base, data, out, allow_incomplete)
    return _adapter_target(path, base, data, out)


def _run_target(path: Path, base: str | None, data, out, allow_incomplete: bool) -> Target:
    """The target for a run directory: its adapter, recorded base, prompt and held-out split."""
    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT

    meta = _read_json(path / "run.json")
    run_id = str(meta.get("id") or path.name)
    status = meta.get("status") or "unknown"
    if status != "complete":
        if status == "running":
            what = "is still running (or was killed without recording it)"
        else:
            what = f"is {status}"
        if not allow_incomplete:
            raise EvalError(
                f"Run {run_id} {what}: its adapter is not a finished result, so it is not evaluated as one. "
                f"Finish it (medchat-train train --resume {run_ref(path)}) or pass --allow-incomplete to score it, "
                "marked as incomplete."
            )
    adapter = path / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise EvalError(
            f"Run {run_id} has no adapter ({adapter}/adapter_config.json is missing)"
            + (f"; it is {status}." if status != "complete" else ".")
            + " Point evaluate at an adapter directory (for example a checkpoint) and pass --data."
        )
    recorded_base = meta.get("base") or "bundled"
    target = Target(
        adapter=adapter,
        base=base or recorded_base,
        data_path=Path(data).expanduser() if data else path / "splits" / "eval.jsonl",
        out_dir=Path(out).expanduser() if out else path / EVAL_DIR,
        prompt_style=meta.get("prompt_style") or "chat",
        system_prompt=meta.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
        max_length=int((meta.get("hyperparameters") or {}).get("max_length") or 512),
        run_dir=path,
        run_id=run_id,
        run_status=status,
    )
    if base and base != recorded_base:
        target.notes.append(f"--base {base} overrides the run's recorded base {recorded_base!r}.")
    if not data and not target.data_path.is_file():
        raise EvalError(
            f"Run {run_id} has no held-out split ({target.data_path} is missing). Pass --data FILE.jsonl."
        )
    return target


def _adapter_target(path: Path, base: str | None, data, out) -> Target:
    """The target for a bare adapter directory: --data is required, the base from the flag or its config."""
    if not (path / "adapter_config.json").is_file():
        raise EvalError(
            f"{path} is neither a run directory (no run.json) nor a LoRA adapter directory (no adapter_config.json)."
        )
    if not data:
        raise EvalError(
            f"{path} is a bare adapter directory, so there is no recorded held-out split: pass --data FILE.jsonl "
            "(one {\"question\", \"answer\"} object per line)."
        )
    notes = []
    if not base:
        trained_on = (_read_json(path / "adapter_config.json").get("base_model_name_or_path") or "")
        if trained_on and Path(trained_on).expanduser().is_dir():
            base = trained_on
        else:
            base = "bundled"
        notes.append(f"No --base given; using {base!r} (adapter_config.json names {trained_on or 'nothing'!r}).")
    return Target(adapter=path, base=base, data_path=Path(data).expanduser(),
                  out_dir=Path(out).expanduser() if out else path / EVAL_DIR, notes=notes)


def load_examples(path: Path, limit: int | None = None) -> list[Example]:
    """{"question","answer"} per line (also the Alpaca-style {"instruction","input","output"})."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"Data file not found: {path}.")
    try:
        rows = read_jsonl(path)
    except RunError as exc:
        raise EvalError(str(exc)) from exc
    examples = []
    for lineno, row in enumerate(rows, 1):
        question = row.get("question")
        answer = row.get("answer")
        if question is None and "output" in row:
            question = row.get("input") or row.get("instruction")
            answer = row.get("output")
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            raise EvalError(
                f"{path}, example {lineno}: expected non-empty \"question\" and \"answer\" strings "
                f"(got keys {sorted(row)})."
            )
        examples.append(Example(question.strip(), answer.strip()))
    if not examples:
        raise EvalError(f"{path} holds no examples: expected one {{\"question\", \"answer\"}} JSON object per line.")
    if limit is not None:
        if limit < 1:
            raise EvalError("--limit must be at least 1.")
        examples = examples[:limit]
    return examples


# --------------------------------------------------------------------------- cache


def target_record(target, adapter_fp: str) -> dict[str, Any]:
    """What every results file says about what was evaluated, and when."""
    return {
        "created": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "run_id": target.run_id,
        "run_dir": str(target.run_dir) if target.run_dir else None,
        "run_status": target.run_status,
        "base_model_name": target.base,
        "adapter": str(target.adapter),
        "adapter_fingerprint": adapter_fp,
    }


def adapter_fingerprint(adapter: Path) -> str:
    parts = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        f = adapter / name
        parts.append(f"{name}:{file_sha256(f) if f.is_file() else 'missing'}")
    return _sha("|".join(parts))


def base_fingerprint(base: str) -> str:
    path = Path(base).expanduser()
    if path.is_dir():
        stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.glob("*.safetensors"))
        return _sha(f"{path.resolve()}|{stats}")
    if path.is_file():
        st = path.stat()
        return _sha(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return base


class PredictionCache:
    """Append-only JSON Lines: one record per finished item; a torn last line (crash) is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines(): see fileio.read_jsonl
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "id" in rec:
                    self.records[rec["id"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any]:
        return self.records[key]

    def add_many(self, recs: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for rec in recs:
                handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for rec in recs:
            self.records[rec["id"]] = rec


# --------------------------------------------------------------------------- running


ProgressFn = Callable[[str, str, int, int], None]  # (model label, phase, done, total)


@dataclass
class EvalSummary:
    results_path: Path
    examples_path: Path
    results: dict[str, Any]
    generated: dict[str, int]
    scored_ppl: dict[str, int]
    loaded: list[str]


def _model_spec(target: Target, which: str, device: str, dtype: str, quantization: str):
    from medchat.core.model import ModelSpec

    adapter = str(target.adapter) if which == "finetuned" else None
    return ModelSpec(base=target.base, adapter=adapter, merge=True, quantization=quantization, device=device, dtype=dtype)


def _resolved_runtime(device: str, dtype: str, quantization: str) -> dict[str, str]:
    from medchat.core import model as model_mod

    dev = model_mod.resolve_device(device)
    return {
        "device": dev,
        "dtype": model_mod.resolve_dtype(dtype, dev),
        "quantization": model_mod.resolve_quantization(quantization, dev),
    }


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


@dataclass
class EvalPlan:
    """What one evaluation needs: the examples, the questions to answer (examples + probes, each once), and per
    model the two caches (answers, perplexities) with what is still missing from them."""

    examples: list[Example]
    probes: list[tuple[str, str]]
    questions: list[str]
    runtime: dict[str, str]
    adapter_fp: str
    gen_caches: dict[str, PredictionCache]
    ppl_caches: dict[str, PredictionCache]

    def todo(self, which: str) -> tuple[list[str], list[Example]]:
        return ([q for q in self.questions if _sha(q)[:20] not in self.gen_caches[which]],
                [e for e in self.examples if e.ppl_id not in self.ppl_caches[which]])

    def cache_names(self) -> dict[str, dict[str, str]]:
        return {w: {"generation": self.gen_caches[w].path.name, "perplexity": self.ppl_caches[w].path.name}
                for w in MODELS}


def plan_evaluation(target: Target, settings, *, limit: int | None, batch_size: int, probes: bool, device: str,
                    dtype: str, quantization: str) -> EvalPlan:
    """Read the examples and open each model's caches, named after everything an answer depends on."""
    from medchat.core.model import ModelError

    examples = load_examples(target.data_path, limit)
    probe_list = PROBES if probes else []
    try:
        runtime = _resolved_runtime(device, dtype, quantization)
    except ModelError as exc:
        raise EvalError(str(exc)) from exc
    adapter_fp = adapter_fingerprint(target.adapter)
    base_fp = base_fingerprint(target.base)
    cache_dir = target.out_dir / "cache"
    gen_caches: dict[str, PredictionCache] = {}
    ppl_caches: dict[str, PredictionCache] = {}
    for which in MODELS:
        key_common = {"v": CACHE_VERSION, "base": target.base, "base_fp": base_fp,
                      "adapter": adapter_fp if which == "finetuned" else None, "runtime": runtime,
                      "prompt_style": target.prompt_style, "system": target.system_prompt}
        # The batch size and how batches are formed are part of an answer's identity: in bf16 the padded shapes
        # change the rounding, and greedy decoding amplifies it (bench/eval_throughput.py).
        gen_key = _sha(json.dumps({**key_common, "settings": settings.as_dict(), "batch_size": batch_size,
                                   "batches": "by prompt tokens"}, sort_keys=True))[:16]
        ppl_key = _sha(json.dumps({**key_common, "max_length": target.max_length}, sort_keys=True))[:16]
        gen_caches[which] = PredictionCache(cache_dir / f"{which}-gen-{gen_key}.jsonl")
        ppl_caches[which] = PredictionCache(cache_dir / f"{which}-ppl-{ppl_key}.jsonl")
    questions = list(dict.fromkeys([e.question for e in examples] + [q for q, _ in probe_list]))
    return EvalPlan(examples, probe_list, questions, runtime, adapter_fp, gen_caches, ppl_caches)


def generate_missing(plan: EvalPlan, target: Target, settings, *, batch_size: int, device: str, dtype: str,
                     quantization: str, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Load each model that has something missing, answer and score it in batches, cache every batch as it ends."""
    from medchat.core.model import ModelError, load

    done: dict[str, Any] = {"generated": {}, "scored": {}, "loaded": [], "model_info": {}, "timing": {}}
    for which in MODELS:
        todo_gen, todo_ppl = plan.todo(which)
        done["generated"][which] = done["scored"][which] = 0
        if not todo_gen and not todo_ppl:
            continue
        try:
            loaded = load(_model_spec(target, which, device, dtype, quantization))
        except ModelError as exc:
            raise EvalError(f"Loading the {which} model failed: {exc}") from exc
        done["loaded"].append(which)
        done["model_info"][which] = loaded.info.as_dict()
        t0 = time.perf_counter()
        done["generated"][which] = _generate(loaded, which, target, settings, todo_gen, plan.gen_caches[which], batch_size,
                                             lambda n, total, w=which: progress and progress(w, "generate", n, total))
        t1 = time.perf_counter()
        done["scored"][which] = _perplexities(loaded, target, todo_ppl, plan.ppl_caches[which], batch_size,
                                              lambda n, total, w=which: progress and progress(w, "perplexity", n, total))
        done["timing"][which] = {"generate_s": round(t1 - t0, 3), "generated": done["generated"][which],
                                 "perplexity_s": round(time.perf_counter() - t1, 3),
                                 "load_s": loaded.info.load_seconds}
        loaded = None  # drop the model before the next one loads
        _free()
    return done


def _generate(loaded, which: str, target: Target, settings, questions: list[str], cache: PredictionCache, batch_size: int,
              progress: Callable[[int, int], None]) -> int:
    """Greedy answers, batch_size prompts of similar token length per generate call (the one batching step)."""
    from medchat.core.engine import Engine, EngineError
    from medchat.core.prompting import build_messages

    engine = Engine(loaded, prompt_style=target.prompt_style)
    conversations = [build_messages(q, target.system_prompt) for q in questions]
    try:
        lengths = [len(engine.fit_prompt(c, settings.max_new_tokens)) for c in conversations]
        count = 0
        for chunk in scores.token_budget_batches(lengths, None, batch_size):
            answers = engine.generate_batch([conversations[i] for i in chunk], settings, batch_size=len(chunk))
            cache.add_many([{"id": _sha(questions[i])[:20], "question": questions[i], "prediction": a}
                            for i, a in zip(chunk, answers)])
            count += len(chunk)
            progress(count, len(questions))
    except EngineError as exc:
        raise EvalError(f"Generation with the {which} model failed: {exc}") from exc
    return count


def _perplexities(loaded, target: Target, examples: list[Example], cache: PredictionCache, batch_size: int,
                  progress: Callable[[int, int], None]) -> int:
    from medchat.core.prompting import PromptError

    from metrics.scores import answer_perplexity

    count = 0

    def store(indices: list[int], rows: list[dict[str, Any]]) -> None:
        nonlocal count
        cache.add_many([{"id": examples[i].ppl_id, **r} for i, r in zip(indices, rows)])
        count += len(indices)
        progress(count, len(examples))

    try:
        answer_perplexity(loaded.model, loaded.tokenizer, [(e.question, e.answer) for e in examples],
                          style=target.prompt_style, system=target.system_prompt, max_length=target.max_length,
                          batch_size=batch_size, on_batch=store)
    except PromptError as exc:
        raise EvalError(f"Cannot score perplexity in {target.data_path}: {exc}") from exc
    return count


def score_examples(plan: EvalPlan) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(aggregates per model, per-example rows, probe answers), from the caches alone (no model)."""
    from metrics.scores import perplexity_from_examples

    examples = plan.examples
    aggregates: dict[str, dict[str, Any]] = {}
    for which in MODELS:
        preds = [plan.gen_caches[which].get(e.gen_id)["prediction"] for e in examples]
        agg = scores.aggregate(preds, [e.answer for e in examples])
        ppl_rows = [plan.ppl_caches[which].get(e.ppl_id) for e in examples]
        ppl = perplexity_from_examples([{k: r[k] for k in ("nll", "tokens", "perplexity", "truncated")} for r in ppl_rows])
        agg.update(perplexity=ppl.perplexity, answer_tokens=ppl.n_tokens,
                   truncated=sum(1 for r in ppl_rows if r.get("truncated")),
                   mean_prediction_words=sum(len(p.split()) for p in preds) / len(preds))
        aggregates[which] = agg
    per_example: list[dict[str, Any]] = []
    for i, e in enumerate(examples):
        row: dict[str, Any] = {"index": i, "id": e.gen_id, "question": e.question, "reference": e.answer}
        for which in MODELS:
            pred = plan.gen_caches[which].get(e.gen_id)["prediction"]
            p = plan.ppl_caches[which].get(e.ppl_id)
            row[which] = {"prediction": pred, **scores.score_pair(pred, e.answer),
                          "perplexity": p["perplexity"], "nll": p["nll"], "answer_tokens": p["tokens"]}
        row["delta"] = {m: row["finetuned"][m] - row["base"][m] for m in scores.ALL_METRICS}
        per_example.append(row)
    probe_rows = [{"question": q, "kind": kind, **{w: plan.gen_caches[w].get(_sha(q)[:20])["prediction"] for w in MODELS}}
                  for q, kind in plan.probes]
    return aggregates, per_example, probe_rows


METRIC_NOTES = {
    "rouge": "rouge_score F-measure with Porter stemming, mean over examples",
    "bleu": "sacreBLEU corpus BLEU (13a), 0-100",
    "token_f1": "SQuAD-style normalised bag-of-tokens F1, mean over examples",
    "set_f1": "the seed notebook's set-of-lowercased-whitespace-tokens F1, mean over examples",
    "perplexity": "exp(total NLL / total tokens) of the reference answers, answer tokens + EOS only",
}


def write_results(target: Target, plan: EvalPlan, results: dict[str, Any],
                  per_example: list[dict[str, Any]]) -> tuple[Path, Path]:
    """examples.jsonl and results.json, each replaced atomically; model_info keeps what an earlier invocation
    learnt about a model this one did not need to load (same caches)."""
    model_infos = results["model_info"]
    caches = plan.cache_names()
    previous = target.out_dir / RESULTS_FILE
    if previous.is_file():
        try:
            old = json.loads(previous.read_text(encoding="utf-8")).get("model_info") or {}
            for which in MODELS:
                if which not in model_infos and which in old and old.get("_cache", {}).get(which) == caches[which]:
                    model_infos[which] = old[which]
        except (OSError, ValueError, AttributeError):
            pass
    model_infos["_cache"] = caches
    target.out_dir.mkdir(parents=True, exist_ok=True)
    examples_path = target.out_dir / EXAMPLES_FILE
    write_text_atomic(examples_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in per_example))
    write_text_atomic(previous, json.dumps(json_finite(results), indent=2, ensure_ascii=False) + "\n")
    return previous, examples_path


def evaluate(
    target: Target,
    settings=None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    probes: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "auto",
    progress: ProgressFn | None = None,
    bootstrap=None,
) -> EvalSummary:
    """Generate (or reuse) predictions for both models, score them, write results.json + examples.jsonl."""
    from metrics.bootstrap import BootstrapConfig, text_metric_intervals

    if batch_size < 1:
        raise EvalError("--batch-size must be at least 1.")
    settings = settings or default_settings()
    bootstrap = bootstrap or BootstrapConfig()
    started = time.perf_counter()
    plan = plan_evaluation(target, settings, limit=limit, batch_size=batch_size, probes=probes, device=device,
                           dtype=dtype, quantization=quantization)
    done = generate_missing(plan, target, settings, batch_size=batch_size, device=device, dtype=dtype,
                            quantization=quantization, progress=progress)
    aggregates, per_example, probe_rows = score_examples(plan)
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        **target_record(target, plan.adapter_fp),
        "prompt_style": target.prompt_style,
        "system_prompt": target.system_prompt,
        "max_length": target.max_length,
        "data": {"path": str(target.data_path), "sha256": file_sha256(target.data_path), "limit": limit},
        "n_examples": len(plan.examples),
        "settings": settings.as_dict(),
        "batch_size": batch_size,
        "runtime": plan.runtime,
        "versions": library_versions("rouge_score", "sacrebleu"),
        "model_info": done["model_info"],  # only the models loaded by this invocation (none when all was cached)
        "timing": done["timing"],
        "elapsed_s": round(time.perf_counter() - started, 3),
        "cache": plan.cache_names(),
        "notes": target.notes,
        "metric_notes": METRIC_NOTES,
        "probes": probe_rows,
        "bootstrap": bootstrap.as_dict(),
        "intervals": text_metric_intervals(per_example, bootstrap),  # fine-tuned minus base: delta, low, high, verdict
        # the aggregates, under the keys the team contract names
        "base": aggregates["base"],
        "finetuned": aggregates["finetuned"],
    }
    results_path, examples_path = write_results(target, plan, results, per_example)
    return EvalSummary(results_path, examples_path, results, done["generated"], done["scored"], done["loaded"])
