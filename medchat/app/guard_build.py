"""Build the guard index (out-of-domain score and thresholds) from a data directory.

    python -m medchat.app.guard_build --data-dir ../shared/data --out assets/guard/default_index
    python -m medchat.app.guard_build --run assets/default-run     # a run's index, on the shipped one
    python -m medchat.app.guard_build --red-flag-classifier        # refit assets/guard/red_flag_classifier.npz

The second rebuilds <run>/guard_index after the shipped index changed: the shipped index plus the run's
training questions (<run>/splits/train.jsonl, or the run rows its present index keeps). The third refits
the semantic red-flag layer on the examples named in assets/guard/red_flags.yaml, after editing them (until
then the guard fits at warm-up and keeps that fit in its cache). All are deterministic (seeded samples; the
fits have no randomness); only `created` in index.json changes.

The data directory is laid out like ../shared/data (train/, mcq/ = medical; ood/ = general); the messages
written for medchat in assets/guard/ are added to both sides, and each --questions file (your own medical
questions) is one more medical group. Embeddings are cached (--cache), so a rebuild
only encodes new texts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from medchat.app.cli_options import MedchatCommand

MAX_PER_GROUP = 1500  # per source or CLINC150 domain: more costs embedding time and changes little


@click.command(name="build-guard-index", cls=MedchatCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory laid out like ../shared/data (train/, mcq/, ood/).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the index to (created; its files are replaced).")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Instead: rebuild RUN/guard_index on the shipped index (assets/guard/default_index).")
@click.option("--questions", "question_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="More medical questions (.jsonl with question/input keys, or .txt), one group per file; "
                   "repeatable.")
@click.option("--max-per-group", type=int, default=MAX_PER_GROUP, show_default=True,
              help="Seeded sample of at most this many texts per source / CLINC150 domain.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Embedding cache directory (default: medchat's cache dir).")
@click.option("--red-flag-classifier", "red_flags", is_flag=True,
              help="Instead: refit the semantic red-flag classifier shipped in assets/guard.")
@click.option("--seed", type=int, default=42, show_default=True)
def main(data_dir, out_dir, question_files, max_per_group, cache, seed, run_dir, red_flags):
    """Build the guard index: fit the score, calibrate thresholds on left-out groups, save."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # huggingface_hub reads it when it is first imported
    if red_flags:
        if data_dir or out_dir or question_files or run_dir:
            raise click.UsageError("--red-flag-classifier refits the shipped classifier alone; "
                                   "leave out --data-dir, --out, --questions and --run")
        return _refit_red_flags(cache)
    if run_dir is not None:
        if data_dir or out_dir or question_files:
            raise click.UsageError("--run rebuilds RUN/guard_index alone; leave out --data-dir, --out and --questions")
        return _rebuild_run(run_dir, seed)
    if data_dir is None or out_dir is None:
        raise click.UsageError("give --data-dir and --out (the shipped index), or --run RUN (a run's index)")
    from medchat.core.guard.build import build_index
    from medchat.core.guard.embedder import shared_embedder
    from medchat.core.guard.questions import asset_groups, data_groups, dedupe, read_questions, sample
    from medchat.core.paths import ASSETS_DIR, cache_dir

    try:
        medical, general = data_groups(data_dir, max_per_group, seed)
        own_medical, own_general = asset_groups(ASSETS_DIR / "guard")
        for f in question_files:
            own_medical[f"file_{f.stem}"] = sample(dedupe(read_questions(f)), max_per_group, seed)
        index = build_index({**medical, **own_medical}, {**general, **own_general}, shared_embedder(),
                            cache_dir=cache or cache_dir() / "guard",
                            source=f"{data_dir} (at most {max_per_group} per group, seed {seed}) and assets/guard",
                            log=lambda m: click.echo(m, err=True))
    except ValueError as exc:  # too few texts to calibrate on, say (a MedchatError is printed by MedchatCommand)
        raise click.ClickException(str(exc)) from None
    index.save(out_dir)
    cal, t = index.meta["calibration"], index.thresholds
    click.echo(f"{out_dir}: thresholds in_domain >= {t.in_domain}, out_of_domain < {t.out_of_domain}; "
               f"left-out calibration AUROC {cal['auroc']}, FPR@95% recall {cal['fpr_at_95_recall']}")


def _rebuild_run(run_dir: Path, seed: int) -> None:
    from medchat.core.guard.build import rebuild_run_index

    try:
        index = rebuild_run_index(run_dir, seed=seed)
    except ValueError as exc:  # a MedchatError is printed by MedchatCommand
        raise click.ClickException(str(exc)) from None
    click.echo(f"{index.path}: shipped index {index.meta['based_on']} plus {index.meta['run_reference']['n']} "
               "run reference rows")


def _refit_red_flags(cache: Path | None) -> None:
    from medchat.core.guard.embedder import shared_embedder
    from medchat.core.guard.rules import default_rules
    from medchat.core.guard.semantic import SHIPPED_FIT, Fit, SemanticConfig
    from medchat.core.paths import cache_dir

    config = SemanticConfig.from_rules(default_rules())
    if config is None:
        raise click.ClickException("assets/guard/red_flags.yaml has no semantic: section to fit")
    fit = Fit.make(config, shared_embedder(), cache or cache_dir() / "guard")
    fit.save(SHIPPED_FIT)
    click.echo(f"{SHIPPED_FIT}: {len(fit.labels)} named emergencies, fingerprint {fit.fingerprint}")


if __name__ == "__main__":
    sys.exit(main())
