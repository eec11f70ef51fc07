"""`medchat serve` under load: 8 concurrent streaming requests against 1, on medchat's own engine.

The server runs in this process on 127.0.0.1 (uvicorn in a thread, the real guard in front); the callers are
the `openai` async client, streaming with usage. Each request asks for --max-tokens new tokens (greedy) on a
different medical question. Reported per setting: the aggregate tokens/s (all completion tokens / wall time),
the tokens/s one stream sees, and the median time to first token; ratios are against 1 stream.

The own engine runs one model.generate per request, in parallel threads (no batching across requests);
a server that batches (vLLM) goes behind `medchat serve --upstream`.

    nice -n 5 .venv/bin/python bench/serve_throughput.py [--base bundled] [--device cpu] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

QUESTIONS = [
    "What are the early signs of type 2 diabetes?",
    "How does high blood pressure damage the kidneys?",
    "What is the difference between a cold and the flu?",
    "Why do doctors recommend statins after a heart attack?",
    "What causes iron deficiency anaemia?",
    "How is asthma usually treated in adults?",
    "What are common side effects of ibuprofen?",
    "How can I lower my cholesterol with diet?",
]


async def one_request(client, question: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model="medchat", messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"tokens": tokens, "elapsed_s": time.perf_counter() - started, "ttft_s": (first or started) - started}


async def measure(url: str, concurrency: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    started = time.perf_counter()
    results = await asyncio.gather(*(one_request(client, QUESTIONS[i % len(QUESTIONS)], max_tokens)
                                     for i in range(concurrency)))
    wall = time.perf_counter() - started
    await client.close()
    tokens = sum(r["tokens"] for r in results)
    return {"name": f"{concurrency} stream{'s' if concurrency > 1 else ''}", "concurrency": concurrency,
            "tokens": tokens, "wall_s": round(wall, 2), "aggregate_tok_s": round(tokens / wall, 2),
            "per_stream_tok_s": round(statistics.median(r["tokens"] / r["elapsed_s"] for r in results), 2),
            "ttft_median_s": round(statistics.median(r["ttft_s"] for r in results), 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="bundled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    _common.setup(niceness=5)
    sys.path.insert(0, str(_common.REPO / "tests"))
    from serve_fakes import running  # uvicorn in a thread on a free port, stopped afterwards

    from medchat.app.cli_options import spec_from_options
    from medchat.app.serve import create_app, load_gateway

    spec = spec_from_options(args.base, None, args.base != "bundled", args.quantization, args.device, "auto", False,
                             backend="torch")
    gateway = load_gateway(spec, upstream=None, model=None, api_key_env="OPENAI_API_KEY", served_model="medchat",
                           policy="note", max_concurrent=args.concurrency, max_request_bytes=1_000_000)
    _common.log(f"serving {gateway.engine.info.summary()}")
    rows = []
    with running(create_app(gateway)) as url:
        asyncio.run(measure(url, 1, 4))  # warm-up: the first generate pays one-off costs
        for concurrency in (1, args.concurrency):
            rows.append(asyncio.run(measure(url, concurrency, args.max_tokens)))
            _common.log(f"{rows[-1]}")
    print(_common.ratio_table(rows, [("aggregate_tok_s", "aggregate tok/s"), ("per_stream_tok_s", "per-stream tok/s"),
                                     ("ttft_median_s", "TTFT median s")],
                              baseline="1 stream", ratio_of=[("aggregate_tok_s", True), ("per_stream_tok_s", True)]))
    path = _common.write_json("serve_throughput", {
        "model": gateway.engine.info.summary(), "device": args.device, "max_tokens": args.max_tokens,
        "backend": gateway.engine.info.extra.get("backend"), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
