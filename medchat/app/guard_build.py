"""Build a guard reference index from question files.

    python -m medchat.app.guard_build --questions FILE.jsonl [--questions MORE.jsonl] \
        [--calibration-dir ../shared/data] [--max-questions 3000] --out DIR

FILE: JSON Lines with a "question" (or "input", as in the Medical Meadow files) key, or plain text with one
question a line. Without --calibration-dir, $MEDCHAT_GUARD_CALIBRATION_DIR or ../shared/data beside the repo
is used when present; else the thresholds of the shipped default index are reused (and recorded as such).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from medchat.app.cli_options import MedchatCommand


@click.command(name="build-guard-index", cls=MedchatCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--questions", "question_files", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Reference questions (.jsonl with question/input keys, or .txt); repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the index to (created).")
@click.option("--calibration-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Data directory with mcq/*.jsonl (in domain) and ood/*.jsonl (general). Default: auto.")
@click.option("--no-calibration", is_flag=True, help="Do not calibrate; reuse the default index's thresholds.")
@click.option("--max-questions", type=int, default=None, help="Sample at most this many reference questions.")
@click.option("--plain-knn", is_flag=True, help="Plain kNN score (no general-question reference).")
@click.option("--seed", type=int, default=42, show_default=True)
def main(question_files, out_dir, calibration_dir, no_calibration, max_questions, plain_knn, seed):
    """Build a guard reference index (embeddings + calibrated thresholds)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from medchat.core.guard.index import build_reference_index
    from medchat.core.guard.questions import read_questions

    questions: list[str] = []
    for f in question_files:
        questions.extend(read_questions(f))
    source = ", ".join(str(f) for f in question_files)
    if max_questions:
        source += f" (seeded sample of {max_questions})"
    try:
        index = build_reference_index(
            questions,
            out_dir,
            calibration_dir=None if no_calibration else (calibration_dir or "auto"),
            general=None if plain_knn else "auto",
            max_questions=max_questions,
            seed=seed,
            source=source,
            log=lambda m: click.echo(m, err=True),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    cal = index.meta.get("calibration", {})
    t = index.thresholds
    click.echo(
        f"{out_dir}: {len(index)} questions, score {index.score_kind}, thresholds in_domain >= {t.in_domain}, "
        f"out_of_domain < {t.out_of_domain}"
        + (f"; calibration AUROC {cal['auroc']}, FPR@95% recall {cal['fpr_at_95_recall']}" if "auroc" in cal else
           f"; {cal.get('method')}")
    )


if __name__ == "__main__":
    sys.exit(main())
