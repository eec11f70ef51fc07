#!/usr/bin/env bash
# Learning curve for the shipped adapter (issue 16): one-epoch runs on growing subsets of Wikidoc + MedQuAD,
# all held out on the same 400 rows (--eval-size), then each scored by medchat-metrics on that split.
#
# Rerun it to resume: a complete run is skipped, an interrupted one continues from its last checkpoint
# (--resume is exact), an evaluated run is not evaluated again (and an interrupted evaluation resumes from
# its cache). Stop it cleanly with ONE SIGINT to the trainer process (`kill -INT <pid of medchat-train>`):
# it finishes the step, writes a checkpoint and marks the run interrupted; this script then stops too.
#
#   POINTS="1200 3000 6000 12000" nohup bench/learning_curve.sh >> /work/runs/curve.log 2>&1 &
#   then: python bench/learning_curve.py   (curve JSON + PNG from the run directories)
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-/work/main/.venv/bin/python}
BIN=$(dirname "$PY")
DATA=${DATA:-$ROOT/../shared/data/train}
[ -d "$DATA" ] || DATA=/work/shared/data/train
POINTS=${POINTS:-"1200 3000 6000 12000"}
EVAL_SIZE=${EVAL_SIZE:-400}
NICE=${NICE:-19}
export MEDCHAT_RUNS_DIR=${MEDCHAT_RUNS_DIR:-/work/runs}
export PYTHONPATH=$ROOT HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

status_of() {  # the run's status, or "none"
  "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("status"))' \
    "$MEDCHAT_RUNS_DIR/$1/run.json" 2>/dev/null || echo none
}

for n in $POINTS; do
  run=curve-$n
  status=$(status_of "$run")
  echo "== $(date -u +%FT%TZ) $run: status $status"
  case $status in
    complete) ;;
    none)
      # Final-only evaluation (a 400-row eval pass is costly on CPU); a checkpoint every 25 steps to resume from.
      nice -n "$NICE" "$BIN/medchat-train" train --preset cpu-smollm2 \
        --data "$DATA/medical_meadow_wikidoc_patient_info.jsonl" "$DATA/medquad.jsonl" \
        --limit "$n" --eval-size "$EVAL_SIZE" --max-length 384 --eval-steps 100000 --save-steps 25 \
        --no-guard-index --name "$run" || { echo "== $run: training stopped (rc $?)"; exit 1; } ;;
    *)
      nice -n "$NICE" "$BIN/medchat-train" train --resume "$run" \
        || { echo "== $run: training stopped (rc $?)"; exit 1; } ;;
  esac
  [ "$(status_of "$run")" = complete ] || { echo "== $run: not complete, stopping"; exit 1; }
  if [ ! -f "$MEDCHAT_RUNS_DIR/$run/eval/results.json" ]; then
    # The held-out split, batch size and settings are the same for every point, so the base model's cached
    # answers and perplexities from an earlier point are exactly what it would produce here.
    mkdir -p "$MEDCHAT_RUNS_DIR/$run/eval/cache"
    for f in "$MEDCHAT_RUNS_DIR"/curve-*/eval/cache/base-*.jsonl; do
      case $f in "$MEDCHAT_RUNS_DIR/$run/"*) continue ;; esac
      [ -f "$f" ] && cp -n "$f" "$MEDCHAT_RUNS_DIR/$run/eval/cache/"
    done
    nice -n "$NICE" "$BIN/medchat-metrics" evaluate "$run" --batch-size 16 --max-new-tokens 128 \
      || { echo "== $run: evaluation stopped (rc $?)"; exit 1; }
  fi
  echo "== $(date -u +%FT%TZ) $run: done"
done
