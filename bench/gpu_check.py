"""The GPU part of the performance issue, for a lent CUDA device (run by bench/gpu_check.sh there).

The device cannot download models, so a TinyLlama-1.1B-shaped Llama is built from its config with
random weights (speed does not depend on the weight values), with the SmolLM2 tokenizer carried from
here (vocabulary 49,152 instead of TinyLlama's 32,000: 2048 x 17,152 more embedding weights).

  1. QLoRA (NF4 base, LoRA r=16 on q_proj/v_proj as the seed) training: the seed's recipe vs
     medchat-train's defaults, same examples and optimizer steps: bench/train_throughput.py --device cuda
  2. Decode: 128 new tokens greedy, bf16 and NF4 4-bit, plain generate and the medchat engine.

    python bench/gpu_check.py --assets .whl/gpu --n 200
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TINYLLAMA = dict(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 rope_theta=10000.0, tie_word_embeddings=False)


def build_model(tokenizer_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**TINYLLAMA, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def decode_rows(base: str, new_tokens: int = 128) -> list[dict]:
    import torch

    from medchat.core.engine import Engine, GenerationSettings
    from medchat.core.model import ModelSpec, load
    from medchat.core.prompting import build_messages

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode import QUESTION, measure_hf_generate

    rows = []
    for quantization in ("none", "nf4"):
        loaded = load(ModelSpec(base=base, device="cuda", quantization=quantization))
        engine = Engine(loaded)
        messages = build_messages(QUESTION)
        ids = torch.tensor([engine.prompt_ids(messages)], device="cuda")
        settings = GenerationSettings(max_new_tokens=new_tokens)
        measure_hf_generate(loaded.model, ids, 8)  # warm-up
        plain = [measure_hf_generate(loaded.model, ids, new_tokens) for _ in range(3)]
        chat = []
        for _ in range(3):
            stream = engine.stream(messages, settings)
            "".join(stream)
            chat.append(stream.stats)
        label = "bf16" if quantization == "none" else "nf4 4-bit"
        rows.append({"name": f"generate {label}", "ttft_s": sorted(r["ttft_s"] for r in plain)[1],
                     "tok_s": sorted(r["tok_s"] for r in plain)[1], "tokens": plain[0]["tokens"]})
        rows.append({"name": f"engine {label}", "ttft_s": sorted(s.ttft_s for s in chat)[1],
                     "tok_s": sorted(s.tokens_per_s for s in chat)[1], "tokens": chat[0].tokens})
        del engine, loaded
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", default=".whl/gpu", help="carried: tokenizer/ and train.jsonl")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--model-dir", default="/tmp/tinyllama-shaped")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    _common.setup(niceness=0)
    import torch

    if not torch.cuda.is_available():
        print("No CUDA device: the GPU check needs one.")
        return 1
    gpu = torch.cuda.get_device_name(0)
    assets = Path(args.assets)
    started = time.perf_counter()
    base = str(build_model(assets / "tokenizer", Path(args.model_dir)))
    _common.log(f"{gpu}: TinyLlama-shaped random model in {base} ({time.perf_counter() - started:.0f}s)")

    rows = decode_rows(base)
    table = _common.ratio_table(rows, [("ttft_s", "TTFT s"), ("tok_s", "decode tok/s"), ("tokens", "tokens")],
                                baseline="generate bf16", ratio_of=[("tok_s", True)])
    print(f"\nDecode on {gpu}, TinyLlama-1.1B-shaped (random weights), 128 new tokens, greedy, median of 3\n")
    print(table, flush=True)
    _common.write_json("gpu_decode", {"gpu": gpu, "rows": rows, "table": table})

    if not args.skip_train:
        command = [sys.executable, str(Path(__file__).resolve().parent / "train_throughput.py"), "--n", str(args.n),
                   "--data", str(assets / "train.jsonl"), "--base", base, "--device", "cuda", "--quantization", "nf4",
                   "--optim", "paged_adamw_32bit", "--lora-targets", "q_proj,v_proj", "--recipes", "seed,medchat",
                   "--no-base"]
        print("\n" + " ".join(command), flush=True)
        subprocess.run(command, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
