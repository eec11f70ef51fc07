"""Does 4-bit NF4 keep the fine-tune? The shipped adapter on the bundled model, three ways to run it in NF4.

bench/gguf_formats.py found that re-quantizing the merged model to 4-bit GGUF rounds the LoRA delta away
(a LoRA's change to a weight is far smaller than a 4-bit step). The same question for bitsandbytes NF4
(double quantization, the loader's settings), on held-out question/answer pairs of the shipped run's own
evaluation split (rebuilt from its config; --n pairs), against the adapter-merged model in fp32:

  merged -> NF4             the adapter merged in full precision, then the merged model quantized
  NF4 base + LoRA unmerged  the base quantized, the adapter on top in full precision (as QLoRA trains it)
  NF4 base, no adapter      what the fine-tune changed, for scale
  fp32 base, no adapter     the same without quantization

  KL            mean KL(fp32 merged || candidate) of the next-token distributions over the answer tokens
  top-1 agree   how often the most likely next token is the same as the fp32 merged model's
  answer ppl    perplexity of the reference answers (answer tokens + EOS)
  decode tok/s  --decode-tokens greedy tokens through the medchat engine (0 = skip)

    nice -n 10 .venv/bin/python bench/nf4_fidelity.py [--n 48] [--device cpu|cuda] [--decode-tokens 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import answer_ids, faithfulness, held_out_pairs, reference_logprobs  # noqa: E402


def decode_speed(loaded, new_tokens: int) -> float | None:
    if new_tokens <= 0:
        return None
    from decode import QUESTION

    from medchat.core.engine import Engine, GenerationSettings
    from medchat.core.prompting import build_messages

    stream = Engine(loaded).stream(build_messages(QUESTION), GenerationSettings(max_new_tokens=new_tokens))
    "".join(stream)
    return stream.stats.tokens_per_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="held-out pairs")
    parser.add_argument("--max-answer-tokens", type=int, default=256)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", default="auto", help="NF4 compute dtype (auto: bf16 where supported)")
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--base", default="bundled", help="base model (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", default=None, help="adapter dir (default: the shipped one)")
    parser.add_argument("--name", default="nf4_fidelity", help="bench/results/<name>.json")
    args = parser.parse_args(argv)
    _common.setup(niceness=10 if args.device == "cpu" else 0)

    from medchat.core.engine import Engine
    from medchat.core.model import ModelSpec, load

    adapter, adapter_note = (args.adapter, f"adapter {args.adapter}") if args.adapter else _common.shipped_adapter()
    if adapter is None:
        print("No adapter to measure (no shipped adapter in assets/default-run/adapter).")
        return 1
    reference = Engine(load(ModelSpec(base=args.base, adapter=adapter, dtype="fp32", device=args.device,
                                      quantization="none")))
    pairs, pairs_note = held_out_pairs(args.n)
    encoded = [answer_ids(reference, q, a, args.max_answer_tokens) for q, a in pairs]
    targets = [ids[start:] for ids, start in encoded]
    _common.log(f"{len(pairs)} pairs, {sum(map(len, targets))} answer tokens; fp32 merged reference")
    ref_logprobs = [reference_logprobs(reference.model, ids, start) for ids, start in encoded]
    rows = [{"name": "fp32, adapter merged (reference)", "kl": 0.0, "top1": 1.0,
             "ppl": faithfulness(ref_logprobs, ref_logprobs, targets)["ppl"], "load_s": reference.info.load_seconds,
             "tok_s": decode_speed(reference, args.decode_tokens)}]
    del reference

    nf4 = dict(base=args.base, quantization="nf4", device=args.device, dtype=args.dtype)
    candidates = [
        ("NF4, merged then quantized", ModelSpec(adapter=adapter, quantize_merged=True, **nf4)),
        ("NF4 base + LoRA unmerged (default)", ModelSpec(adapter=adapter, **nf4)),
        ("NF4 base, no adapter", ModelSpec(adapter=None, **nf4)),
        ("fp32 base, no adapter", ModelSpec(base=args.base, adapter=None, dtype="fp32", device=args.device,
                                            quantization="none")),
    ]
    for name, spec in candidates:
        started = time.perf_counter()
        loaded = load(spec)
        logprobs = [reference_logprobs(loaded.model, ids, start) for ids, start in encoded]
        row = {"name": name, **faithfulness(ref_logprobs, logprobs, targets), "load_s": loaded.info.load_seconds,
               "tok_s": decode_speed(loaded, args.decode_tokens), "dtype": loaded.info.dtype,
               "summary": loaded.info.summary(), "score_s": round(time.perf_counter() - started, 1)}
        rows.append(row)
        _common.log(f"{name}: {row}")
        del loaded

    shown = [{**row, "kl": f"{row['kl']:.4f}", "top1": f"{row['top1']:.1%}"} for row in rows]
    table = _common.ratio_table(shown, [("kl", "KL vs fp32 merged"), ("top1", "top-1 agree"), ("ppl", "answer ppl"),
                                        ("tok_s", "decode tok/s")],
                                baseline=rows[1]["name"], ratio_of=[("tok_s", True)])
    print(f"\nNF4 and the fine-tune: {adapter_note}; {args.device}; {len(pairs)} pairs ({pairs_note}), answers "
          f"cut at {args.max_answer_tokens} tokens; decode: {args.decode_tokens} greedy tokens, one run\n")
    print(table)
    path = _common.write_json(args.name, {"settings": vars(args), "adapter": adapter_note, "pairs": pairs_note,
                                          "rows": rows, "table": table})
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
