"""The learning curve (issue 16): held-out answer loss, ROUGE-L and token F1 against training rows.

Reads the run directories bench/learning_curve.sh made (curve-N under MEDCHAT_RUNS_DIR, default /work/runs),
checks that every point was held out on the same split, and writes bench/results/learning_curve.json and
assets/report/learning-curve.png. Each evaluated point also gets a paired bootstrap 95% interval of the
fine-tuned minus base difference (resampling held-out questions; metrics.bootstrap, as the report shows it).

    python bench/learning_curve.py [--runs-dir /work/runs] [--prefix curve-]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, log, write_json  # noqa: E402

PNG = REPO / "assets" / "report" / "learning-curve.png"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def intervals(results: dict, rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Paired bootstrap intervals of fine-tuned minus base: the ones `medchat-metrics evaluate` stored, else the
    same computation from the examples (metrics.bootstrap, its default resamples and seed)."""
    stored = results.get("intervals")
    if stored:
        return stored
    from metrics.bootstrap import BootstrapConfig, text_metric_intervals

    return text_metric_intervals(rows, BootstrapConfig())


def collect(runs_dir: Path, prefix: str) -> list[dict[str, Any]]:
    points = []
    for run_dir in sorted(runs_dir.glob(f"{prefix}*")):
        run = _read(run_dir / "run.json")
        manifest = _read(run_dir / "data_manifest.json")
        if not run or not manifest:
            continue
        point: dict[str, Any] = {
            "run": run_dir.name, "status": run.get("status"), "train_rows": manifest["split"]["train"],
            "eval_rows": manifest["split"]["eval"], "eval_size": manifest.get("eval_size"),
            "train_tokens": (manifest.get("tokens") or {}).get("train", {}).get("total_tokens"),
            "steps": (run.get("final") or {}).get("steps"), "elapsed_s": run.get("elapsed_s"),
            "tokens_per_s": (run.get("final") or {}).get("tokens_per_s"),
            "eval_loss": (run.get("final") or {}).get("eval_loss"),
            "hyperparameters": run.get("hyperparameters"),
        }
        results = _read(run_dir / "eval" / "results.json")
        examples = run_dir / "eval" / "examples.jsonl"
        if run.get("status") == "complete" and results and examples.is_file():
            rows = [json.loads(line) for line in examples.read_text(encoding="utf-8").splitlines()]
            point.update(
                eval_sha256=results["data"]["sha256"], n_examples=results["n_examples"],
                settings=results["settings"], batch_size=results["batch_size"],
                base={k: results["base"][k] for k in ("rougeL", "token_f1", "rouge1", "bleu", "perplexity")},
                finetuned={k: results["finetuned"][k] for k in ("rougeL", "token_f1", "rouge1", "bleu", "perplexity")},
                intervals=intervals(results, rows),
            )
            point["answer_loss"] = {w: round(math.log(point[w]["perplexity"]), 5) for w in ("base", "finetuned")}
        points.append(point)
    points.sort(key=lambda p: p["train_rows"])
    shas = {p["eval_sha256"] for p in points if "eval_sha256" in p}
    if len(shas) > 1:
        raise SystemExit(f"the curve's runs were evaluated on different held-out splits ({len(shas)} hashes); "
                         "rerun them with the same --eval-size and seed.")
    return points


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [p for p in points if "finetuned" in p]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("answer loss (nats/token, lower is better)", "answer_loss", None),
              ("ROUGE-L", "rougeL", "rougeL"), ("token F1", "token_f1", "token_f1"))
    for ax, (title, key, metric) in zip(axes, panels):
        xs = [p["train_rows"] for p in done]
        if key == "answer_loss":
            ys = [p["answer_loss"]["finetuned"] for p in done]
            base = done[0]["answer_loss"]["base"] if done else None
            errs = None
        else:
            ys = [p["finetuned"][key] for p in done]
            base = done[0]["base"][key] if done else None
            errs = [[p["intervals"][metric]["delta"] - p["intervals"][metric]["low"] for p in done],
                    [p["intervals"][metric]["high"] - p["intervals"][metric]["delta"] for p in done]]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label="fine-tuned (95% paired bootstrap)")
        if base is not None:
            ax.axhline(base, color="grey", linestyle="--", label="base model")
            if key == "rougeL":
                ax.axhline(base * 1.4, color="tab:green", linestyle=":", label="target: base +40%")
            elif key == "answer_loss":
                ax.axhline(base + math.log(0.6), color="tab:green", linestyle=":", label="target: perplexity -40%")
        ax.set_xscale("log")
        ax.set_xlabel("training rows (one epoch)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    n = done[0]["n_examples"] if done else 0
    fig.suptitle(f"SmolLM2-135M-Instruct + LoRA (cpu-smollm2 preset), Wikidoc + MedQuAD, {n} fixed held-out rows",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("MEDCHAT_RUNS_DIR", "/work/runs")))
    parser.add_argument("--prefix", default="curve-")
    parser.add_argument("--png", type=Path, default=PNG)
    args = parser.parse_args()
    points = collect(args.runs_dir, args.prefix)
    if not points:
        raise SystemExit(f"no {args.prefix}* runs under {args.runs_dir}; run bench/learning_curve.sh first.")
    print(f"{'rows':>6} {'status':>11} {'eval loss':>9} {'ROUGE-L base/ft (delta 95% CI)':>40} "
          f"{'token F1 base/ft':>18} {'ppl base/ft':>14}")
    for p in points:
        line = f"{p['train_rows']:>6} {p['status']:>11} {p['eval_loss'] or float('nan'):>9.4f}"
        if "finetuned" in p:
            ci = p["intervals"]["rougeL"]
            line += (f" {p['base']['rougeL']:.4f}/{p['finetuned']['rougeL']:.4f} "
                     f"({ci['delta']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}])"
                     f" {p['base']['token_f1']:.4f}/{p['finetuned']['token_f1']:.4f}"
                     f" {p['base']['perplexity']:6.2f}/{p['finetuned']['perplexity']:6.2f}")
        print(line)
    if any("finetuned" in p for p in points):
        plot(points, args.png)
        log(f"wrote {args.png}")
    out = write_json("learning_curve", {"runs_dir": str(args.runs_dir),
                                        "png": str(args.png.relative_to(REPO)) if args.png.is_relative_to(REPO)
                                        else str(args.png), "points": points})
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
