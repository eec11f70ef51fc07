"""Training data: load sources, map columns, filter, dedupe, shuffle, subsample, split, check, encode.

Everything here is deterministic given the config's seed, and every row that is dropped is counted
under the filter that dropped it (the counts go to the run's data_manifest.json).
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from medchat.core.errors import MedchatError
from medchat.core.fileio import file_sha256, read_jsonl

FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
QUESTION_COLUMNS = ("input", "question", "instruction", "prompt")
ANSWER_COLUMNS = ("output", "answer", "response", "completion")
FILTER_NAMES = ("empty", "question_too_short", "answer_too_short", "spam", "duplicate")


class DataError(MedchatError):
    """A problem with the user's data; the message names the file/line and what to do."""


@dataclass
class Row:
    question: str
    answer: str
    source: str
    line: int  # 1-based line (jsonl, csv) or record number (json, parquet, hub)

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def as_json(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}


@dataclass
class SourceInfo:
    source: str
    kind: str  # file format or "hub"
    rows: int
    sha256: str | None
    question_column: str
    answer_column: str
    path: str | None = None  # absolute path of a local file

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Prepared:
    train: list[Row]
    eval: list[Row]
    manifest: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading


def _looks_like_file(source: str) -> bool:
    return source.lower().endswith(FILE_SUFFIXES) or "/" not in source or source.startswith((".", "/", "~")) \
        or Path(source).expanduser().exists()


def read_records(source: str) -> tuple[list[dict[str, Any]], list[int], str, str | None]:
    """(records, line numbers, kind, sha256). Raises DataError with file and line for bad input."""
    path = Path(source).expanduser()
    if path.exists() or _looks_like_file(source):
        if not path.exists():
            raise DataError(f"data file {source} does not exist.")
        if path.is_dir():
            raise DataError(f"{source} is a directory; pass the data files inside it (.json, .jsonl, .csv, "
                            ".parquet).")
        suffix = path.suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise DataError(f"{source}: unsupported file type '{suffix}'; use .json, .jsonl, .csv or .parquet.")
        digest = file_sha256(path)
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
        records, lines = reader(path)
        return records, lines, suffix.lstrip("."), digest
    return _read_hub(source)


def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    numbered = read_jsonl(path, DataError)
    return [row for _, row in numbered], [n for n, _ in numbered]


def _read_json(path: Path) -> tuple[list[dict], list[int]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}).") from None
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            obj = lists[0]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{path}: expected a JSON list of objects (or JSON Lines in a .jsonl file).")
    return obj, list(range(1, len(obj) + 1))


def _read_csv(path: Path) -> tuple[list[dict], list[int]]:
    records, lines = [], []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                records.append(row)
                lines.append(reader.line_num)
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: malformed CSV ({exc}).") from None
    return records, lines


def _read_parquet(path: Path) -> tuple[list[dict], list[int]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read as Parquet ({exc}).") from None
    records = table.to_pylist()
    return records, list(range(1, len(records) + 1))


def _read_hub(source: str) -> tuple[list[dict], list[int], str, str | None]:
    name, _, split = source.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise DataError(
            f"could not load the Hub dataset '{name}' ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Without network access, pass local files instead (e.g. --data ../shared/data/train/medquad.jsonl); "
            f"a local path that does not exist is also read as a Hub id."
        ) from None
    records = list(ds)
    fingerprint = getattr(ds, "_fingerprint", None)
    return records, list(range(1, len(records) + 1)), "hub", fingerprint


def _pick(columns: Iterable[str], wanted: str | None, defaults: tuple[str, ...], what: str, source: str,
          flag: str) -> str:
    cols = list(columns)
    if wanted:
        if wanted not in cols:
            raise DataError(f"{source}: no column '{wanted}' for the {what}; columns are: {', '.join(cols)}.")
        return wanted
    for name in defaults:
        if name in cols:
            return name
    article = "an" if what[0] in "aeiou" else "a"
    raise DataError(f"{source}: missing {article} {what} column (looked for {', '.join(defaults)}); columns are: "
                    f"{', '.join(cols) or '(none)'}. Name it with {flag}.")


def load_rows(sources: list[str], question_column: str | None = None, answer_column: str | None = None
              ) -> tuple[list[Row], list[SourceInfo]]:
    rows: list[Row] = []
    infos: list[SourceInfo] = []
    for source in sources:
        records, lines, kind, digest = read_records(source)
        if not records:
            raise DataError(f"{source} holds no records.")
        columns: dict[str, None] = {}
        for record in records[:100]:
            columns.update(dict.fromkeys(record))
        qcol = _pick(columns, question_column, QUESTION_COLUMNS, "question", source, "--question-column")
        acol = _pick(columns, answer_column, ANSWER_COLUMNS, "answer", source, "--answer-column")
        for record, line in zip(records, lines):
            question = record.get(qcol)
            # instruction/input/output data: the question is `input`, or `instruction` when input is empty.
            if qcol == "input" and not question and not question_column:
                question = record.get("instruction")
            rows.append(Row(_text(question), _text(record.get(acol)), source, line))
        infos.append(SourceInfo(source, kind, len(records), digest, qcol, acol,
                                str(Path(source).expanduser().resolve()) if kind != "hub" else None))
    return rows, infos


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


# ---------------------------------------------------------------- filtering and splitting


def normalize_question(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip(" ?.!")


def apply_filters(rows: list[Row], min_question_chars: int, min_answer_chars: int, spam_markers: list[str],
                  dedupe: bool) -> tuple[list[Row], dict[str, int]]:
    dropped = {name: 0 for name in FILTER_NAMES}
    markers = [m.lower() for m in spam_markers]
    seen: set[tuple[str, str]] = set()
    kept = []
    for row in rows:
        if not row.question or not row.answer:
            dropped["empty"] += 1
        elif len(row.question) < min_question_chars:
            dropped["question_too_short"] += 1
        elif len(row.answer) < min_answer_chars:
            dropped["answer_too_short"] += 1
        elif any(m in row.question.lower() for m in markers):
            dropped["spam"] += 1
        else:
            key = (normalize_question(row.question), row.answer.strip())
            if dedupe and key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            kept.append(row)
    return kept, dropped


def contamination(train: list[Row], eval_rows: list[Row]) -> list[Row]:
    """Evaluation rows whose (normalized) question also appears in the training split."""
    train_questions = {normalize_question(r.question) for r in train}
    return [r for r in eval_rows if normalize_question(r.question) in train_questions]


def split_rows(rows: list[Row], eval_fraction: float, seed: int, limit: int | None, eval_size: int | None = None
               ) -> tuple[list[Row], list[Row], dict[str, int]]:
    """Seeded shuffle, subsample to `limit`, split; no question lands on both sides.

    With `eval_size`, the held-out rows are the first `eval_size` of the shuffled pool whatever `limit` is,
    and `limit` counts training rows only: runs on growing subsets (a learning curve) share one held-out split.
    """
    order = list(rows)
    random.Random(seed).shuffle(order)
    if eval_size is not None:
        return _split_fixed_eval(order, eval_size, limit)
    if limit is not None:
        order = order[:limit]
    n_eval = math.ceil(len(order) * eval_fraction)
    if len(order) - n_eval < 1 or n_eval < 1:
        raise DataError(
            f"{len(order)} examples cannot be split with eval_fraction={eval_fraction}: that leaves "
            f"{len(order) - n_eval} for training and {n_eval} for evaluation. Use more data or another fraction."
        )
    eval_rows, train = order[:n_eval], order[n_eval:]
    # Contamination check: a question asked in both splits would make eval scores meaningless.
    leaked = contamination(train, eval_rows)
    if leaked:
        leaked_ids = {id(r) for r in leaked}
        eval_rows = [r for r in eval_rows if id(r) not in leaked_ids]
        train = train + leaked
    if not eval_rows:
        raise DataError("every evaluation question also appears in the training split; nothing is left to "
                        "evaluate on. Deduplicate the data or use more of it.")
    assert not contamination(train, eval_rows)
    return train, eval_rows, {"moved_to_train_contamination": len(leaked)}


def _split_fixed_eval(order: list[Row], eval_size: int, limit: int | None
                      ) -> tuple[list[Row], list[Row], dict[str, int]]:
    if len(order) <= eval_size:
        raise DataError(f"{len(order)} examples cannot hold out eval_size={eval_size} and still train on one. "
                        "Use more data or a smaller --eval-size.")
    eval_rows = order[:eval_size]
    held = {normalize_question(r.question) for r in eval_rows}
    # The held-out split is fixed, so a training row that repeats a held-out question is skipped (and
    # counted), never the other way round.
    train, skipped = [], 0
    for row in order[eval_size:]:
        if limit is not None and len(train) >= limit:
            break
        if normalize_question(row.question) in held:
            skipped += 1
        else:
            train.append(row)
    if not train:
        raise DataError("every training candidate repeats a held-out question; use more data.")
    return train, eval_rows, {"moved_to_train_contamination": 0, "train_rows_skipped_contamination": skipped}


def prepare(cfg) -> Prepared:
    """Load, filter, split. `cfg` is a TrainConfig (or anything with the same attributes)."""
    rows, infos = load_rows(list(cfg.data), cfg.question_column, cfg.answer_column)
    kept, dropped = apply_filters(rows, cfg.min_question_chars, cfg.min_answer_chars, cfg.spam_markers, cfg.dedupe)
    if not kept:
        details = ", ".join(f"{k}: {v}" for k, v in dropped.items() if v) or "nothing"
        raise DataError(f"no examples left after filtering the {len(rows)} rows read from "
                        f"{', '.join(cfg.data)} (dropped by {details}). Check the column mapping "
                        "(--question-column/--answer-column) and the filter settings.")
    eval_size = getattr(cfg, "eval_size", None)
    train, eval_rows, moved = split_rows(kept, cfg.eval_fraction, cfg.seed, cfg.limit, eval_size)
    manifest = {
        "sources": [i.as_dict() for i in infos],
        "rows_read": len(rows),
        "dropped": dropped,
        "kept_after_filters": len(kept),
        "limit": cfg.limit,
        "used": len(train) + len(eval_rows),
        "seed": cfg.seed,
        "eval_fraction": None if eval_size is not None else cfg.eval_fraction,
        "eval_size": eval_size,
        "split": {"train": len(train), "eval": len(eval_rows)},
        "contamination": {"eval_questions_in_train": len(contamination(train, eval_rows)), **moved},
        "filters": {"min_question_chars": cfg.min_question_chars, "min_answer_chars": cfg.min_answer_chars,
                    "spam_markers": list(cfg.spam_markers), "dedupe": cfg.dedupe},
    }
    return Prepared(train, eval_rows, manifest)


def write_jsonl(path: Path, rows: list[Row]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.as_json(), ensure_ascii=False) + "\n")


def read_split(path: Path) -> list[Row]:
    records, lines = _read_jsonl(path)
    return [Row(r["question"], r["answer"], str(path), n) for r, n in zip(records, lines)]


# ---------------------------------------------------------------- encoding


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    prompt_tokens: int
    answer_tokens: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_rows(tokenizer, rows: list[Row], style: str, system: str | None, max_length: int) -> list[Encoded]:
    """Answer-only labels through the shared medchat.core.prompting.encode_example."""
    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT, PromptError, encode_example

    system = DEFAULT_SYSTEM_PROMPT if system is None else system
    out = []
    for row in rows:
        try:
            enc = encode_example(tokenizer, row.question, row.answer, style=style, system=system,
                                 max_length=max_length)
        except PromptError as exc:
            raise DataError(f"{row.where()}: {exc}") from None
        out.append(Encoded(enc.input_ids, enc.labels, enc.truncated, enc.prompt_tokens, enc.answer_tokens))
    return out


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def q(p: float) -> int:
        return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]

    return {"min": s[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1],
            "mean": round(sum(s) / len(s), 1)}


def token_summary(encoded: list[Encoded]) -> dict[str, Any]:
    return {
        "examples": len(encoded),
        "truncated": sum(e.truncated for e in encoded),
        "total_tokens": sum(len(e) for e in encoded),
        "answer_tokens": sum(e.answer_tokens for e in encoded),
        "length": length_stats([len(e) for e in encoded]),
        "prompt_length": length_stats([e.prompt_tokens for e in encoded]),
        "answer_length": length_stats([e.answer_tokens for e in encoded]),
    }


# ---------------------------------------------------------------- batching


class EncodedDataset:
    """A plain map-style dataset over encoded examples (the Trainer only needs __len__/__getitem__)."""

    def __init__(self, encoded: list[Encoded]):
        self.encoded = encoded
        self.lengths = [len(e) for e in encoded]

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        e = self.encoded[index]
        return {"input_ids": e.input_ids, "labels": e.labels}


class SeededLengthSampler:
    """Random order that depends only on (seed, epoch): resume replays the exact order.

    With grouping, indices are shuffled, cut into mega-batches of 50 batches and each mega-batch is sorted by
    length, so a batch holds examples of similar length (little padding) while the order stays random.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.group:
            mega = self.batch_size * 50
            grouped = []
            for start in range(0, len(order), mega):
                chunk = sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
                batches = [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
                rng.shuffle(batches)
                grouped.extend(i for b in batches for i in b)
            order = grouped
        return iter(order)


class Collator:
    """Pads each batch to its own longest example (right padding, labels -100 on padding).

    With packing=True the batch's examples are packed first-fit-decreasing into as few rows of at most
    `max_length` tokens as possible, with position_ids restarting at 0 for every example and no attention
    mask: transformers then builds a block-diagonal mask from the position ids, so packed examples never
    attend to each other. `num_tokens` (real, non-padding tokens) is popped by the trainer for tokens/s.
    """

    def __init__(self, pad_token_id: int, packing: bool = False, max_length: int = 512):
        self.pad = pad_token_id
        self.packing = packing
        self.max_length = max_length

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        num_tokens = sum(len(f["input_ids"]) for f in features)
        if self.packing:
            rows = self._pack(features)
        else:
            rows = [(f["input_ids"], f["labels"], None) for f in features]
        width = max(len(r[0]) for r in rows)
        ids, labels, masks, positions = [], [], [], []
        for row_ids, row_labels, row_pos in rows:
            pad = width - len(row_ids)
            ids.append(row_ids + [self.pad] * pad)
            labels.append(row_labels + [-100] * pad)
            if self.packing:
                positions.append(row_pos + list(range(pad)))  # the padding tail is its own "sequence"
            else:
                masks.append([1] * len(row_ids) + [0] * pad)
        batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                 "num_tokens": torch.tensor(num_tokens)}
        if self.packing:
            batch["position_ids"] = torch.tensor(positions)
        else:
            batch["attention_mask"] = torch.tensor(masks)
        return batch

    def _pack(self, features):
        bins: list[list[dict]] = []
        sizes: list[int] = []
        for f in sorted(features, key=lambda f: -len(f["input_ids"])):
            n = len(f["input_ids"])
            for i, size in enumerate(sizes):
                if size + n <= self.max_length:
                    bins[i].append(f)
                    sizes[i] += n
                    break
            else:
                bins.append([f])
                sizes.append(n)
        rows = []
        for group in bins:
            ids, labels, pos = [], [], []
            for f in group:
                ids += f["input_ids"]
                labels += f["labels"]
                pos += list(range(len(f["input_ids"])))
            rows.append((ids, labels, pos))
        return rows


# One more forward/backward pass costs about as much as this many more tokens: a pass's fixed cost over the
# cost of one token, profiled on the bundled model on CPU.
PASS_OVERHEAD_TOKENS = 96


def plan_passes(lengths: list[int], max_tokens: int, overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Group a batch's rows (indices) into passes of at most `max_tokens` (rows x their longest row) that
    minimise the padded tokens plus a fixed cost per pass. Rows are taken longest first, so every group is a
    run of similar lengths; a single row longer than the budget gets a pass of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = [0] + [math.inf] * len(order)  # best[k]: cheapest plan for the k longest rows
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(end):
            rows, width = end - begin, lengths[order[begin]]
            if rows > 1 and rows * width > max_tokens:
                continue
            cost = best[begin] + rows * width + overhead
            if cost < best[end]:
                best[end], start[end] = cost, begin
    groups, end = [], len(order)
    while end:
        groups.append(order[start[end]:end])
        end = start[end]
    return groups[::-1]


def split_batch(batch: dict[str, Any], max_tokens: int, overhead: int = PASS_OVERHEAD_TOKENS) -> list[dict[str, Any]]:
    """Cut a collated batch into the passes plan_passes chooses, each trimmed to its own longest row.
    Backward passes over the pieces add up to the batch's gradients, while activation memory stays that of
    one piece and padding all but disappears even when a batch mixes short and long examples. Measured on
    CPU: 2048 tokens run as two passes of 1024 take 25% less time than as one (cache-sized activations).
    `num_tokens` goes with the first piece only."""
    import torch

    if not max_tokens:
        return [batch]
    rows, width = batch["input_ids"].shape
    if "attention_mask" in batch:
        lengths = batch["attention_mask"].sum(dim=1).tolist()
    else:  # packed rows: their padding tail is its own sequence, keep the width
        lengths = [width] * rows
    groups = plan_passes(lengths, max_tokens, overhead)
    if len(groups) == 1:
        return [batch]
    pieces = []
    for n, group in enumerate(groups):
        index = torch.tensor(group)
        trim = lengths[group[0]]
        piece = {key: value.index_select(0, index)[:, :trim] for key, value in batch.items()
                 if key != "num_tokens"}
        if "num_tokens" in batch:
            piece["num_tokens"] = batch["num_tokens"] if n == 0 else torch.tensor(0)
        pieces.append(piece)
    return pieces


def counts_line(dropped: dict[str, int]) -> str:
    c = Counter({k: v for k, v in dropped.items() if v})
    return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"
