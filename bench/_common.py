"""Shared helpers for the side-by-side benchmarks: environment, the ratio table, JSON results.

Every bench runs its candidates in ONE process on the same machine, one after the other, and prints
ratios against a named baseline: on shared, noisy machines only ratios measured together mean much.
Results go to bench/results/<name>.json with the machine, versions and settings; the records behind the
README's tables are committed there.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SHARED_DATA = REPO.parent / "shared" / "data"

if str(REPO) not in sys.path:  # `python bench/x.py` from anywhere
    sys.path.insert(0, str(REPO))


def setup(niceness: int = 10) -> None:
    """Offline, quiet and polite: never touch the Hub, run at low priority on the shared cores."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from medchat.app import environment

    environment.start()  # what a command does first: MEDCHAT_CACHE_DIR & co. for the core the bench calls
    try:
        current = os.nice(0)
        if current < niceness:
            os.nice(niceness - current)
    except OSError:
        pass


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for module in ("torch", "transformers", "peft", "trl", "llama_cpp", "gguf"):
        try:
            info[f"{module}_version"] = __import__(module).__version__
        except Exception:
            info[f"{module}_version"] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=5).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    return info


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def ratio_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], *, baseline: str,
                ratio_of: Iterable[tuple[str, bool]] = (), name_key: str = "name") -> str:
    """A plain-text table. `columns` = [(key, header)]; `ratio_of` = [(key, higher_is_better)] adds
    a `key÷baseline` column per key (for lower-is-better keys the ratio is baseline/ours, so > 1 is
    always better). Rows without a value show '-'."""
    ratio_of = list(ratio_of)
    base = next((r for r in rows if r.get(name_key) == baseline), None)
    headers = ["", *[h for _, h in columns]] + [f"x {h}" for k, h in columns if k in dict(ratio_of)]
    body = []
    for row in rows:
        cells = [str(row.get(name_key))] + [fmt(row.get(k)) for k, _ in columns]
        for key, header in columns:
            if key not in dict(ratio_of):
                continue
            higher = dict(ratio_of)[key]
            ours, theirs = row.get(key), (base or {}).get(key)
            if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and ours and theirs:
                cells.append(f"{(ours / theirs) if higher else (theirs / ours):.2f}x")
            else:
                cells.append("-")
        body.append(cells)
    widths = [max(len(str(line[i])) for line in [headers, *body]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in [headers, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = f"(ratios: x = relative to '{baseline}', > 1 is better)" if ratio_of else ""
    return "\n".join(lines + ([note] if note else []))


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"bench": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **payload}
    target = RESULTS_DIR / f"{name}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, target)
    return target


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def shipped_adapter() -> tuple[str | None, str]:
    """The adapter the chat app applies by default, and a label saying which it is."""
    from medchat.core.paths import default_adapter_dir

    found = default_adapter_dir()
    if found:
        return str(found), f"shipped adapter {found}"
    return None, "base model (no shipped adapter in assets/default-run/adapter yet)"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- faithfulness on held-out pairs
# (bench/gguf_formats.py and bench/nf4_fidelity.py score candidate models against the merged model in fp32)


def held_out_pairs(n: int) -> tuple[list[tuple[str, str]], str]:
    """The shipped run's evaluation split, rebuilt from its config (the split itself is not shipped)."""
    from trainer.config import load_config
    from trainer.data import prepare

    config = REPO / "assets" / "default-run" / "config.yaml"
    cfg = load_config(config_file=config)
    eval_rows = prepare(cfg).eval
    return [(r.question, r.answer) for r in eval_rows[:n]], f"{len(eval_rows)} held-out rows of {config.parent.name}"


def answer_ids(engine, question: str, answer: str, max_answer_tokens: int) -> tuple[list[int], int]:
    """Prompt + answer + EOS token ids, and where the answer starts."""
    from medchat.core.prompting import build_messages

    prompt = engine.prompt_ids(build_messages(question))
    answer_tokens = engine.tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
    return prompt + answer_tokens + [engine.tokenizer.eos_token_id], len(prompt)


def log_softmax(rows):
    import numpy as np

    rows = rows.astype(np.float64)
    rows -= rows.max(axis=-1, keepdims=True)
    return rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))


def reference_logprobs(model, ids: list[int], start: int):
    """A transformers model's log-probabilities of every next token from position start-1 on (predicting the answer)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, start - 1:-1].float().cpu().numpy()
    return log_softmax(logits)


def faithfulness(reference: list, candidate: list, targets: list) -> dict:
    import numpy as np

    kl, agree, nll, count = 0.0, 0, 0.0, 0
    for ref, cand, target in zip(reference, candidate, targets):
        kl += float((np.exp(ref) * (ref - cand)).sum())
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        nll -= float(cand[np.arange(len(target)), target].sum())
        count += len(target)
    return {"kl": kl / count, "top1": agree / count, "ppl": math.exp(nll / count)}
