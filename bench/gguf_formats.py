"""Which GGUF layout the llama.cpp fast path should run: speed and faithfulness, side by side.

The bundled base ships as Q4_1; medchat.core.gguf_export can write the layers' weight matrices (with the
shipped adapter merged in fp32) as Q4_1, Q4_0 or Q8_0. For each layout, on one thread:

  prompt s        evaluating the whole 104-token chat prompt of bench/decode.py's 63-token question
  question s      the same after the system prompt was prefilled (what the chat app's first turn pays)
  decode tok/s    128 greedy tokens with the chat settings (medchat.core.fastdecode.LlamaCppEngine)
  MB              file size
  and, on held-out question/answer pairs (the shipped run's own evaluation split, reproduced from its
  config; --n pairs), against the adapter-merged model in fp32 through transformers:
  KL              mean KL(fp32 || layout) of the next-token distributions over the answer tokens
  top-1 agree     how often the most likely next token is the same as fp32's
  answer ppl      perplexity of the reference answers (answer tokens + EOS), fp32's in its own row

A last row runs the shipped base file without the adapter: what the fine-tune changed, for scale.

    nice -n 10 .venv/bin/python bench/gguf_formats.py [--n 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import answer_ids, faithfulness, held_out_pairs, log_softmax, reference_logprobs  # noqa: E402
from decode import QUESTION  # noqa: E402

LAYOUTS = ("q4_1", "q4_0", "q8_0")


def llama_logprobs(llama, ids: list[int], start: int):
    llama.reset()
    llama.eval(ids)
    return log_softmax(llama.scores[start - 1:len(ids) - 1])


def speed(engine, repeats: int, new_tokens: int) -> dict:
    from medchat.core.engine import GenerationSettings
    from medchat.core.prompting import build_messages

    messages = build_messages(QUESTION)
    prompt = engine.prompt_ids(messages)
    whole, question, rates = [], [], []
    for _ in range(repeats):
        engine.llama.reset()
        started = time.perf_counter()
        engine.llama.eval(prompt)
        whole.append(time.perf_counter() - started)
        engine.llama.reset()
        engine.prefill(messages[:1])
        stream = engine.stream(messages, GenerationSettings(max_new_tokens=new_tokens))
        "".join(stream)
        question.append(stream.stats.ttft_s)
        rates.append(stream.stats.tokens_per_s)
    return {"prompt_s": statistics.median(whole), "question_s": statistics.median(question),
            "tok_s": statistics.median(rates)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="held-out pairs for the faithfulness columns")
    parser.add_argument("--max-answer-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (medchat's default: half the CPUs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    _common.setup()

    from medchat.core import fastdecode
    from medchat.core.engine import Engine
    from medchat.core.model import ModelSpec, load

    if not fastdecode.llamacpp_available():
        print("llama-cpp-python is not installed (pip install 'medchat[llamacpp]'): nothing to compare.")
        return 0
    import llama_cpp

    adapter, adapter_note = _common.shipped_adapter()
    spec = ModelSpec(adapter=adapter)
    reference = Engine(load(ModelSpec(adapter=adapter, dtype="fp32")))
    pairs, pairs_note = held_out_pairs(args.n)
    encoded = [answer_ids(reference, q, a, args.max_answer_tokens) for q, a in pairs]
    targets = [ids[start:] for ids, start in encoded]
    _common.log(f"{len(pairs)} pairs, {sum(map(len, targets))} answer tokens; fp32 reference")
    ref_logprobs = [reference_logprobs(reference.model, ids, start) for ids, start in encoded]
    ref = faithfulness(ref_logprobs, ref_logprobs, targets)
    rows = [{"name": "fp32 (transformers), reference", "mb": None, "prompt_s": None, "question_s": None,
             "tok_s": None, "kl": 0.0, "top1": 1.0, "ppl": ref["ppl"]}]
    candidates = [(f"merged, {layout}" + (" (the base's own type)" if layout == "q4_1" else ""), spec, layout)
                  for layout in LAYOUTS]
    candidates.append(("base as shipped, no adapter (q4_1)", ModelSpec(), "q4_1"))  # what fine-tuning changed
    for name, model_spec, layout in candidates:
        engine = fastdecode.LlamaCppEngine.load(model_spec, n_threads=args.threads, gguf_type=layout)
        path = Path(engine.info.extra["gguf"])
        _common.log(f"{name}: {path.name}")
        row = {"name": name, "mb": path.stat().st_size / 2**20, **speed(engine, args.repeats, args.new_tokens)}
        scorer = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_threads=args.threads,
                                 n_threads_batch=args.threads, logits_all=True, verbose=False)
        logprobs = [llama_logprobs(scorer, ids, start) for ids, start in encoded]
        row.update(faithfulness(ref_logprobs, logprobs, targets))
        rows.append(row)
        _common.log(f"{name}: {row}")
        del scorer, engine

    shown = [{**row, "kl": f"{row['kl']:.4f}", "top1": f"{row['top1']:.1%}"} for row in rows]
    table = _common.ratio_table(
        shown, [("mb", "MB"), ("prompt_s", "prompt s"), ("question_s", "question s"), ("tok_s", "decode tok/s"),
               ("kl", "KL vs fp32"), ("top1", "top-1 agree"), ("ppl", "answer ppl")],
        baseline=rows[1]["name"], ratio_of=[("question_s", False), ("tok_s", True)])
    print(f"\nGGUF layouts for the llama.cpp path: {adapter_note}; {args.threads} thread(s), median of "
          f"{args.repeats}; faithfulness on {len(pairs)} pairs ({pairs_note}), answers cut at "
          f"{args.max_answer_tokens} tokens\n")
    print(table)
    path = _common.write_json("gguf_formats", {"settings": vars(args), "adapter": adapter_note, "pairs": pairs_note,
                                               "rows": rows, "table": table})
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
