"""Chat latency and decode speed, side by side, on the bundled model (CPU).

A ~60-token question in the chat template, 128 new tokens, greedy. For each way of decoding: time to
first token (TTFT, prompt processing included) and decode tokens/s after the first token.

  hf-generate        plain `model.generate` (bf16 on CPUs with bf16, else fp32), no penalties
  lean-static        a hand-written greedy loop over a StaticCache (same dtype), no penalties
  lean-compiled      the same loop with torch.compile (only with --compile: compiling takes minutes)
  engine-torch       medchat.core.engine.Engine as the chat app used it (adapter merged, repetition penalty
                     1.1, no repeated 4-grams)
  llama.cpp          llama-cpp-python on the very same GGUF file the bundled model ships (Q4_1), its own
                     greedy sampler: what a user of llama.cpp would get
  llama.cpp, medchat's file   the same, on the GGUF medchat's fast path runs (adapter merged, its layout)
  onnxruntime-genai  onnxruntime-genai on medchat's converted model (adapter merged, int8), its own loop:
                     append_tokens / get_logits / argmax, no penalties: what a user of the library would get
  engine-onnx        medchat's default CPU path (medchat.core.onnx_engine.OnnxEngine, int8 unless
                     --onnx-precisions says more), the chat's decoding settings, streamed text; cold / first /
                     typed / warm as for engine-llamacpp below
  engine-onnx D+fp32 k=K   exact speculative decoding (--onnx-precisions int8+fp32, --draft-tokens): the D
                     model drafts K tokens, the fp32 model verifies them in one pass; cold and warm rows,
                     with the share of drafts accepted and the fp32 passes per answer. Its answers are then
                     checked (untimed) against the fp32 torch engine's and the plain fp32 ONNX engine's on
                     EXACT_PROMPTS, for every K; so are the plain ONNX engines' and the torch engine's in its
                     default dtype, with the tokens each answer shares with the fp32 torch one
  engine-torch fp32  the torch engine in fp32 (with a +fp32 or fp32 ONNX precision): the reference for exactness
  engine-llamacpp    the optional fast path (medchat.core.fastdecode.LlamaCppEngine): the adapter merged and
                     exported (medchat.core.gguf_export), the chat app's decoding settings, streamed text:
                     cold (empty KV cache), first (the system prompt prefilled when the model loaded,
                     as the chat app does), typed (also the draft read ahead at the user's last pause,
                     before the last word), pasted (the question pasted: the chat reads a paste at once,
                     and Enter comes PASTE_TO_ENTER_S later, while that read may still be running) and
                     warm (a follow-up turn: the whole prompt prefix cached)

Each candidate runs --repeats times, interleaved round-robin so load on the shared machine hits all
alike; the table shows medians. Rows marked * stop at EOS (the chat settings), so they may produce
fewer than 128 tokens. The llama.cpp rows are skipped, with a note, when llama-cpp-python is absent; the
ratios are then against the torch engine, and the note gives llama.cpp's recorded speed against it.
Each medchat engine's last answer is compared with the torch engine's (same text, shared prefix).

    nice -n 10 .venv/bin/python bench/decode.py [--repeats 3] [--compile] [--threads 2] [--onnx-precisions int8,fp32]
        [--onnx-precisions int8,fp32,int8+fp32,int4+fp32 --draft-tokens 3,4,6,8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# The README's llama.cpp row and the torch engine's in the same run (2 threads, bench/results/decode.json),
# for the ratio when llama-cpp-python is not installed: decode tok/s.
RECORDED_LLAMACPP = {"llama.cpp": 54.75, "engine-torch*": 13.78}

PASTE_TO_ENTER_S = 0.25  # a quick paste-then-Enter

QUESTION = (  # 63 tokens with the SmolLM2 tokenizer
    "I am a 52-year-old woman with type 2 diabetes and high blood pressure. For two weeks my ankles have swelled "
    "every evening, I get short of breath on one flight of stairs and I need extra pillows at night. What could "
    "cause this, and which tests should I ask for?"
)
# The exactness check (with the fp32 torch engine): the question above and the bundled test's three.
EXACT_PROMPTS = [QUESTION, "What are common symptoms of iron deficiency anaemia?", "How is high blood pressure treated?",
                 "What should I do after a minor burn?"]


class _FirstTokenTimer:
    """A transformers streamer that records when the first generated token arrives."""

    def __init__(self):
        self.first = None
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.first is None:
            self.first = time.perf_counter()

    def end(self):
        pass


def measure_hf_generate(model, input_ids, new_tokens):
    import torch

    timer = _FirstTokenTimer()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                             streamer=timer)
    ended = time.perf_counter()
    n = out.shape[1] - input_ids.shape[1]
    return {"ttft_s": timer.first - started, "tokens": n, "tok_s": (n - 1) / (ended - timer.first)}


class LeanDecoder:
    """Greedy decoding with a preallocated StaticCache: one forward per token, nothing else."""

    def __init__(self, model, max_len, compile_model=False):
        import torch

        self.model = model
        self.max_len = max_len
        self.forward = model.forward
        if compile_model:
            self.forward = torch.compile(model.forward, dynamic=False, fullgraph=False)

    def __call__(self, input_ids, new_tokens):
        import torch
        from transformers import StaticCache

        cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)
        length = input_ids.shape[1]
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, past_key_values=cache, cache_position=torch.arange(length),
                             use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            first = time.perf_counter()
            tokens = [int(token)]
            position = torch.tensor([length])
            for _ in range(new_tokens - 1):
                out = self.forward(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(int(token))
                position += 1
        ended = time.perf_counter()
        return {"ttft_s": first - started, "tokens": len(tokens), "tok_s": (len(tokens) - 1) / (ended - first)}


def measure_engine(engine, messages, settings, reset=None):
    if reset:
        reset()
    stream = engine.stream(messages, settings)
    text = "".join(stream)
    stats = stream.stats
    result = {"ttft_s": stats.ttft_s, "tokens": stats.tokens, "tok_s": stats.tokens_per_s, "text": text}
    if getattr(engine, "drafter", None) is not None:
        spec = engine.speculation
        result.update(acceptance=spec["accepted"] / spec["drafted"] if spec["drafted"] else None,
                      verify_passes=spec["verify_passes"])
    return result


def measure_llama_cpp(llm, prompt_ids, new_tokens):
    llm.reset()  # no prompt reuse between repeats: cold TTFT like the other rows
    started = time.perf_counter()
    first = None
    count = 0
    for _token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        count += 1
        if first is None:
            first = time.perf_counter()
        if count >= new_tokens:
            break
    ended = time.perf_counter()
    return {"ttft_s": first - started, "tokens": count, "tok_s": (count - 1) / (ended - first)}


def measure_onnx_plain(og_model, prompt_ids, new_tokens):
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=len(prompt_ids) + new_tokens + 1, batch_size=1)
    generator = og.Generator(og_model, params)
    started = time.perf_counter()
    generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    first = None
    for count in range(1, new_tokens + 1):
        logits = generator.get_logits()
        token = int(np.argmax(logits.reshape(-1, logits.shape[-1])[-1]))
        if first is None:
            first = time.perf_counter()
        if count < new_tokens:
            generator.append_tokens(np.asarray([token], dtype=np.int32))
    ended = time.perf_counter()
    return {"ttft_s": first - started, "tokens": new_tokens, "tok_s": (new_tokens - 1) / (ended - first)}


def add_token_engine_rows(candidates, name, engine, messages, settings):
    """cold / first / typed / warm rows for a TokenEngine (see the module doc)."""
    def cold():
        engine.reset()  # both KV caches of a speculative engine

    def first_question():  # as in the chat app: the system prompt was prefilled when the model loaded
        cold()
        engine.prefill(messages[:1])

    def typed_question():  # as in the chat app: the draft was read at the user's last pause in typing
        first_question()
        engine.prefill(messages[:1], draft=QUESTION[:QUESTION.rfind(" ")])

    def pasted_question():  # as in the chat app: a paste is read at once, Enter follows (the read may still run)
        first_question()
        threading.Thread(target=engine.prefill, args=(messages[:1],), kwargs={"draft": QUESTION}).start()
        time.sleep(PASTE_TO_ENTER_S)

    for label, reset in (("cold", cold), ("first", first_question), ("typed", typed_question),
                         ("pasted", pasted_question)):
        candidates[f"{name} {label}*"] = lambda reset=reset: measure_engine(engine, messages, settings, reset=reset)
    # warm prompt: a follow-up turn in the chat reuses the KV cache of the shared prefix
    candidates[f"{name} warm*"] = lambda: measure_engine(engine, messages, settings)


def agreement(tokenizer, reference: str, text: str) -> dict:
    ours, theirs = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text, reference))
    shared = 0
    for a, b in zip(ours, theirs):
        if a != b:
            break
        shared += 1
    return {"same_text": text == reference, "shared_prefix_tokens": shared, "reference_tokens": len(theirs)}


def exactness(speculative, plain, torch_engine, torch_fp32, draft_tokens, settings, tokenizer) -> dict:
    """Untimed, with the fp32 torch engine: the answers to EXACT_PROMPTS of each speculative engine (every k),
    each plain ONNX engine and the torch engine in its default dtype, against the fp32 torch engine's and the
    plain fp32 ONNX engine's: how many are the same text, and how many tokens each shares with the fp32 torch
    answer before they part (arithmetic alone, dtype or quantization, moves a greedy answer)."""
    from medchat.core.prompting import build_messages

    if torch_fp32 is None:
        return {}
    conversations = [build_messages(prompt) for prompt in EXACT_PROMPTS]
    _common.log("exactness: reference answers")
    torch_answers = [torch_fp32.generate(c, settings)[0] for c in conversations]
    onnx_fp32 = plain.get("fp32")
    onnx_answers = [onnx_fp32.generate(c, settings)[0] for c in conversations] if onnx_fp32 else None
    runs = {"engine-torch*": (torch_engine, None)}
    runs.update({f"engine-onnx {precision}": (engine, None) for precision, engine in plain.items() if precision != "fp32"})
    for precision, engine in speculative.items():
        runs.update({f"engine-onnx {precision} k={k}": (engine, int(k)) for k in draft_tokens.split(",")})
    out = {}
    for name, (engine, k) in runs.items():
        if k is not None:
            engine.draft_tokens = k
        _common.log(f"exactness: {name}")
        answers = [engine.generate(c, settings)[0] for c in conversations]
        out[name] = {
            "prompts": len(answers),
            "same_as_torch_fp32": sum(a == b for a, b in zip(answers, torch_answers)),
            "same_as_onnx_fp32": sum(a == b for a, b in zip(answers, onnx_answers)) if onnx_answers else None,
            "shared_prefix_tokens_with_torch_fp32": [agreement(tokenizer, b, a)["shared_prefix_tokens"]
                                                     for a, b in zip(answers, torch_answers)],
            "answers": answers}
    return out


def random_adapter(out: Path) -> str:
    """A LoRA of the shape medchat-train makes by default, random non-zero weights: speed is the same."""
    import torch
    from peft import LoraConfig, get_peft_model

    from medchat.core.model import ModelSpec, load

    base = load(ModelSpec(dtype="fp32")).model
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.save_pretrained(out)
    return str(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure the lean loop under torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and llama.cpp")
    parser.add_argument("--only", default="", help="comma-separated subset of candidate names")
    parser.add_argument("--json-name", default="decode", help="writes bench/results/NAME.json (keep a subset apart)")
    parser.add_argument("--llama-threads", type=int, default=None,
                        help="llama.cpp and ONNX threads (default: medchat's, one per physical core)")
    parser.add_argument("--onnx-precisions", default="int8",
                        help="comma-separated ONNX weight precisions for the engine-onnx rows (int8, int4, fp32, "
                             "or speculative: int8+fp32, int4+fp32)")
    parser.add_argument("--draft-tokens", default="4", help="comma-separated drafts per pass for the + precisions")
    parser.add_argument("--no-lora-export", action="store_true",
                        help="without a shipped adapter, skip the random-LoRA merge+export row")
    args = parser.parse_args(argv)
    _common.setup()

    import torch

    from medchat.core import fastdecode
    from medchat.core.engine import Engine, GenerationSettings
    from medchat.core.model import ModelSpec, load, resolve_dtype
    from medchat.core.prompting import build_messages

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    adapter, adapter_note = _common.shipped_adapter()
    notes = [f"chat engines use: {adapter_note}"]
    tmp = tempfile.TemporaryDirectory(prefix="medchat-bench-")
    export_adapter = adapter
    if adapter is None and not args.no_lora_export:
        _common.log("no shipped adapter: making a random r=16 all-linear LoRA for the merged-export row")
        export_adapter = random_adapter(Path(tmp.name) / "adapter")
        notes.append("engine-llamacpp+lora: a random r=16 all-linear LoRA merged and exported (no shipped adapter)")

    dtype = resolve_dtype("auto", "cpu")
    _common.log(f"loading the bundled model ({dtype})")
    plain = load(ModelSpec(dtype=dtype))
    tokenizer, model = plain.tokenizer, plain.model
    engine_torch = Engine(load(ModelSpec(adapter=adapter, dtype=dtype)))
    messages = build_messages(QUESTION)
    prompt_ids = engine_torch.prompt_ids(messages)
    question_tokens = len(tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    input_ids = torch.tensor([prompt_ids])
    chat_settings = GenerationSettings(max_new_tokens=args.new_tokens)
    _common.log(f"question {question_tokens} tokens, prompt {len(prompt_ids)} tokens, {args.new_tokens} new, "
                f"{threads} threads")

    candidates = {}
    candidates["hf-generate"] = lambda: measure_hf_generate(model, input_ids, args.new_tokens)
    lean = LeanDecoder(model, len(prompt_ids) + args.new_tokens + 8)
    candidates["lean-static"] = lambda: lean(input_ids, args.new_tokens)
    if args.compile:
        compiled = LeanDecoder(model, len(prompt_ids) + args.new_tokens + 8, compile_model=True)
        _common.log("compiling (first call)...")
        started = time.perf_counter()
        compiled(input_ids, 4)
        notes.append(f"torch.compile warm-up took {time.perf_counter() - started:.0f}s")
        candidates["lean-compiled"] = lambda: compiled(input_ids, args.new_tokens)
    candidates["engine-torch*"] = lambda: measure_engine(engine_torch, messages, chat_settings)

    from medchat.core import onnx_engine

    speculative = {}  # precision -> engine, for the exactness check
    onnx_engines = {}
    engine_torch32 = None
    if onnx_engine.available():
        precisions = args.onnx_precisions.split(",")
        if any(p.split("+")[-1] == "fp32" for p in precisions):
            engine_torch32 = Engine(load(ModelSpec(adapter=adapter, dtype="fp32")))
            candidates["engine-torch fp32*"] = lambda: measure_engine(engine_torch32, messages, chat_settings)
        for precision in precisions:
            _common.log(f"loading the ONNX engine ({precision}; converts once, then cached)")
            started = time.perf_counter()
            engine_onnx = onnx_engine.OnnxEngine.load(ModelSpec(adapter=adapter), n_threads=args.llama_threads,
                                                      precision=precision)
            onnx_engines[precision] = engine_onnx
            notes.append(f"engine-onnx {precision}: loaded in {time.perf_counter() - started:.1f}s "
                         f"({engine_onnx.info.extra['n_threads']} thread(s))")
            if precision == "int8":
                candidates["onnxruntime-genai int8"] = lambda m=engine_onnx._og_model: measure_onnx_plain(
                    m, prompt_ids, args.new_tokens)
            if engine_onnx.drafter is None:
                add_token_engine_rows(candidates, f"engine-onnx {precision}", engine_onnx, messages, chat_settings)
                continue
            speculative[precision] = engine_onnx
            for k in (int(k) for k in args.draft_tokens.split(",")):
                def run(engine=engine_onnx, k=k, cold=True):
                    engine.draft_tokens = k
                    return measure_engine(engine, messages, chat_settings, reset=engine.reset if cold else None)

                candidates[f"engine-onnx {precision} k={k} cold*"] = run
                # a follow-up turn: right after the cold row, whose prompt both KV caches still hold
                candidates[f"engine-onnx {precision} k={k} warm*"] = lambda run=run: run(cold=False)
    else:
        notes.append("ONNX rows skipped: onnxruntime-genai is not installed")

    if fastdecode.llamacpp_available():
        import llama_cpp

        from medchat.core import bundled

        gguf = bundled.find_bundled_gguf()
        llama_threads = args.llama_threads or fastdecode.cpu_threads()
        notes.append(f"llama.cpp rows: {llama_threads} thread(s); torch rows: {threads}")
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=llama_threads,
                              n_threads_batch=llama_threads, verbose=False)
        candidates["llama.cpp"] = lambda: measure_llama_cpp(llm, prompt_ids, args.new_tokens)
        engine_fast = fastdecode.LlamaCppEngine.load(ModelSpec(adapter=adapter), n_threads=llama_threads)
        layout = engine_fast.info.quantization
        same_file = llama_cpp.Llama(model_path=engine_fast.info.extra["gguf"], n_ctx=2048, n_threads=llama_threads,
                                    n_threads_batch=llama_threads, verbose=False)
        candidates[f"llama.cpp, medchat's {layout} file"] = lambda: measure_llama_cpp(same_file, prompt_ids,
                                                                                      args.new_tokens)
        add_token_engine_rows(candidates, "engine-llamacpp", engine_fast, messages, chat_settings)
        if adapter is None and export_adapter is not None:
            _common.log("exporting the merged random adapter to GGUF (once, cached)")
            started = time.perf_counter()
            engine_lora = fastdecode.LlamaCppEngine.load(ModelSpec(adapter=export_adapter), n_threads=llama_threads)
            notes.append(f"merge + GGUF export of the LoRA took {time.perf_counter() - started:.1f}s (cached after)")
            candidates["engine-llamacpp+lora*"] = lambda: measure_engine(engine_lora, messages, chat_settings,
                                                                         reset=engine_lora.llama.reset)
        baseline = "llama.cpp"
    else:
        notes.append("llama.cpp rows skipped: llama-cpp-python is not installed (pip install 'medchat[llamacpp]'); "
                     f"recorded in the README on this machine: llama.cpp {RECORDED_LLAMACPP['llama.cpp']} tok/s "
                     f"against the torch engine's {RECORDED_LLAMACPP['engine-torch*']} in the same run")
        baseline = "engine-torch*"
    if args.only:
        keep = set(args.only.split(","))
        candidates = {k: v for k, v in candidates.items() if k in keep or k.rstrip("*") in keep}

    for name, run in candidates.items():  # warm-up: first-call costs out of the measurement
        _common.log(f"warm-up {name}")
        run()
    samples: dict[str, list[dict]] = {name: [] for name in candidates}
    for repeat in range(args.repeats):
        for name, run in candidates.items():
            result = run()
            samples[name].append(result)
            _common.log(f"#{repeat + 1} {name}: ttft {result['ttft_s']:.3f}s, {result['tokens']} tok, "
                        f"{result['tok_s']:.1f} tok/s")

    rows = []
    for name, results in samples.items():
        rows.append({
            "name": name,
            "ttft_s": statistics.median(r["ttft_s"] for r in results),
            "tok_s": statistics.median(r["tok_s"] for r in results),
            "tokens": statistics.median(r["tokens"] for r in results),
        })
    for row in rows:
        results = samples[row["name"]]
        if "acceptance" in results[0]:
            row["acceptance"] = statistics.median(r["acceptance"] for r in results if r["acceptance"] is not None)
            row["verify_passes"] = statistics.median(r["verify_passes"] for r in results)
    table = _common.ratio_table(rows, [("ttft_s", "TTFT s"), ("tok_s", "decode tok/s"), ("tokens", "tokens"),
                                       ("acceptance", "drafts kept"), ("verify_passes", "fp32 passes")],
                                baseline=baseline, ratio_of=[("ttft_s", False), ("tok_s", True)])
    print(f"\nDecode on the bundled SmolLM2-135M-Instruct, CPU ({threads} threads, torch {dtype}), "
          f"{question_tokens}-token question ({len(prompt_ids)}-token prompt), {args.new_tokens} new tokens, greedy, "
          f"median of {args.repeats}\n")
    print(table)
    for note in notes:
        print(f"- {note}")
    texts = {name: results[-1].get("text") for name, results in samples.items() if results[-1].get("text")}
    agree = {}
    for reference_name in ("engine-torch*", "engine-torch fp32*"):
        reference = texts.get(reference_name)
        label = "the torch engine" + (" (fp32)" if "fp32" in reference_name else f" ({dtype})")
        for name, text in texts.items():
            # the torch engine in fp32 against its bf16 self too: how much dtype alone moves a greedy answer
            if reference is None or name == reference_name or name.startswith("engine-torch*"):
                continue
            result = agree[f"{name} vs {reference_name}"] = agreement(tokenizer, reference, text)
            print(f"- {name}: {'same answer as' if result['same_text'] else 'differs from'} {label} "
                  f"(first {result['shared_prefix_tokens']} of {result['reference_tokens']} tokens shared)")
    plain_onnx = {precision: engine for precision, engine in onnx_engines.items() if engine.drafter is None}
    exact = exactness(speculative, plain_onnx, engine_torch, engine_torch32, args.draft_tokens, chat_settings,
                      tokenizer)
    for name, result in exact.items():
        said = [f"{result[key]}/{result['prompts']} answers equal {label}'s" for key, label in (
            ("same_as_torch_fp32", "the fp32 torch engine"), ("same_as_onnx_fp32", "the plain fp32 ONNX engine"))
            if result[key] is not None]
        said.append("tokens shared with the fp32 torch answers: "
                    + ", ".join(map(str, result["shared_prefix_tokens_with_torch_fp32"])))
        print(f"- {name}, on {result['prompts']} prompts: " + ", ".join(said))
    path = _common.write_json(args.json_name, {
        "settings": {"new_tokens": args.new_tokens, "repeats": args.repeats, "threads": threads, "dtype": dtype,
                     "question_tokens": question_tokens, "prompt_tokens": len(prompt_ids),
                     "chat_settings": chat_settings.as_dict()},
        "baseline": baseline, "rows": rows, "samples": samples, "notes": notes, "table": table,
        "answers": texts, "agreement_with_torch_engine": agree, "speculative_exactness": exact,
        "recorded_llamacpp": None if fastdecode.llamacpp_available() else RECORDED_LLAMACPP,
    })
    print(f"\nJSON: {path}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
