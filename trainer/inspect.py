"""Rendering for `medchat-train inspect-data`: examples with their loss mask, and the counts."""

from __future__ import annotations

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

IGNORE = -100


def masked_text(tokenizer, input_ids: list[int], labels: list[int]) -> Text:
    """Prompt tokens dim, tokens that carry loss bold green (contiguous runs decoded together)."""
    text = Text()
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] == IGNORE) != (labels[start] == IGNORE):
            chunk = tokenizer.decode(input_ids[start:i], skip_special_tokens=False)
            text.append(chunk, style="dim" if labels[start] == IGNORE else "bold green")
            start = i
    return text


def render_examples(console, tokenizer, rows, encoded, split: str) -> None:
    for n, (row, enc) in enumerate(zip(rows, encoded), start=1):
        title = (f"{split} example {n} ({row.where()}): {len(enc.input_ids)} tokens, prompt {enc.prompt_tokens}, "
                 f"loss on {enc.answer_tokens}{', TRUNCATED' if enc.truncated else ''}")
        console.print(Panel(masked_text(tokenizer, enc.input_ids, enc.labels), title=title, title_align="left"))
    console.print(Text.assemble(("dim", "dim"), " = prompt (masked, -100)   ", ("bold green", "bold green"),
                                " = answer + end-of-turn token (carry the loss)"))


def render_counts(console, manifest: dict, cfg) -> None:
    table = Table(title="data", show_header=False)
    for s in manifest["sources"]:
        table.add_row("source", f"{s['source']} ({s['kind']}, {s['rows']} rows, question={s['question_column']}, "
                                f"answer={s['answer_column']})")
    table.add_row("rows read", str(manifest["rows_read"]))
    for name, count in manifest["dropped"].items():
        table.add_row(f"  dropped: {name}", str(count))
    table.add_row("kept after filters", str(manifest["kept_after_filters"]))
    table.add_row("used (limit)", f"{manifest['used']} ({cfg.limit or 'no limit'})")
    table.add_row("split train / eval", f"{manifest['split']['train']} / {manifest['split']['eval']}")
    table.add_row("eval questions moved (contamination)", str(manifest["contamination"]["moved_to_train_contamination"]))
    if manifest.get("eval_size"):  # fixed held-out split: leaks are skipped from the training side instead
        table.add_row("train rows skipped (contamination)",
                      str(manifest["contamination"]["train_rows_skipped_contamination"]))
    for split, tok in manifest.get("tokens", {}).items():
        length = tok.get("length", {})
        table.add_row(f"{split} tokens", f"{tok['total_tokens']} total, {tok['answer_tokens']} carry loss, "
                                         f"{tok['truncated']} truncated at max_length={cfg.max_length}")
        if length:
            table.add_row(f"{split} length", "  ".join(f"{k} {v}" for k, v in length.items()))
    console.print(table)
