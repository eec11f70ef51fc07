"""Training throughput, side by side: the seed's recipe vs TRL's SFTTrainer defaults vs medchat-train.

Same base (the bundled SmolLM2-135M-Instruct, fp32 weights, bf16 autocast where the CPU has bf16), the
same training examples (medchat-train's own split of ../shared/data/train/medical_meadow_wikidoc_patient_info.jsonl:
--n training rows), the same LoRA (r=16, alpha 32, dropout 0.05, all linear
layers: medchat's default), the same optimizer settings (AdamW, lr 2e-4, cosine, 5% warmup, no weight
decay, grad norm 1.0) and the same number of optimizer steps (n / 8). What differs is the recipe:

  seed      the seed notebook: "### Instruction/### Response" text padded to 512 tokens, loss on every
            token (DataCollatorForLanguageModeling, pad = eos so EOS is masked too), batch 2 x accum 4,
            transformers Trainer
  trl       TRL SFTTrainer with its defaults for prompt-completion data (chat template, loss on the
            completion only, batch 8, pad per batch, max_length 1024, gradient checkpointing on, logging
            every 10 steps); only the optimizer settings above are set so the loss is comparable
  medchat   medchat-train's Python API with the cpu-smollm2 preset's defaults (answer-only loss with
            EOS, batches of 8 in random order, each run as passes of at most 1024 tokens over rows of
            similar length, its evaluation and checkpoint cadence);
            the guard index build is off (not training)

Each recipe runs in its own process (clean peak memory), one after the other. Measured from the
trainer's on_train_begin to on_train_end (in-training evaluation and checkpointing included):
examples/s, answer tokens/s (the supervised answer+EOS tokens of the data per second; the same work
for every recipe), tokens/s through the model (padding included), peak RSS, and afterwards the
held-out answer-only loss (mean cross-entropy over answer+EOS tokens, each recipe in its own prompt
format; the untrained base for reference) on medchat's own 10% split plus --heldout more rows of the
same file whose questions none of the recipes trained on (the split alone, ~20 rows, is too noisy).

    nice -n 10 .venv/bin/python bench/train_throughput.py [--n 200] [--heldout 200] [--recipes seed,trl,medchat]
    nice -n 10 .venv/bin/python bench/train_throughput.py --quick     # 48 examples, a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

DATA_FILE = _common.SHARED_DATA / "train" / "medical_meadow_wikidoc_patient_info.jsonl"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
# transformers 5 dropped warmup_ratio: a float warmup_steps below 1 is the ratio.
OPTIM = {"learning_rate": 2e-4, "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "weight_decay": 0.0,
         "max_grad_norm": 1.0}
RECIPES = ("seed", "trl", "medchat")
# Where and what to train; the GPU check (bench/gpu_check.py) changes these.
SETUP = {"base": "bundled", "device": "cpu", "quantization": "none", "optim": "adamw_torch"}


# ---------------------------------------------------------------- shared pieces (child process)


def _config(n_train: int, data_file: Path):
    """medchat-train's cpu-smollm2 config whose own split gives n_train training rows."""
    from trainer.config import load_config

    limit = n_train
    while limit - math.ceil(limit * 0.1) < n_train:
        limit += 1
    overrides = {"data": [str(data_file)], "limit": limit, "guard_index": False, "target_modules": LORA["target_modules"]}
    if SETUP["device"] != "cpu":  # the GPU check: same base and 4-bit setting as the other recipes
        overrides.update(base=SETUP["base"], device=SETUP["device"], quantization=SETUP["quantization"],
                         optimizer=SETUP["optim"])
    return load_config("cpu-smollm2", overrides=overrides)


def extra_heldout(cfg, prepared, n: int) -> list[dict]:
    """n more rows of the same file for the held-out loss, none with a question seen in training: the
    split's own eval rows (10% of n_train) are too few to tell recipes apart."""
    import random

    from trainer import data as data_mod

    rows, _ = data_mod.load_rows(list(cfg.data), cfg.question_column, cfg.answer_column)
    kept, _ = data_mod.apply_filters(rows, cfg.min_question_chars, cfg.min_answer_chars, cfg.spam_markers, True)
    used = {data_mod.normalize_question(r.question) for r in prepared.train + prepared.eval}
    unused = [r for r in kept if data_mod.normalize_question(r.question) not in used]
    random.Random(7).shuffle(unused)
    return [r.as_json() for r in unused[:n]]


class Meter:
    """A TrainerCallback that times training and counts tokens through the embedding in train mode."""

    def __init__(self, model):
        from transformers import TrainerCallback

        import torch

        meter = self
        self.tokens = 0
        self.steps = 0
        self.began = self.ended = None
        self.peak_rss_mb = None
        self.peak_gpu_mb = None

        def hook(module, args):  # training forwards only (evaluation runs without grad)
            if torch.is_grad_enabled():
                meter.tokens += args[0].numel()

        model.get_input_embeddings().register_forward_pre_hook(hook)

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                meter.began = time.perf_counter()

            def on_train_end(self, args, state, control, **kwargs):
                meter.ended = time.perf_counter()
                meter.peak_rss_mb = _common.peak_rss_mb()
                meter.steps = state.global_step
                if torch.cuda.is_available():
                    meter.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20

        self.callback = _Callback()


def heldout_loss(adapter_dir: str, rows: list[dict], style: str) -> float:
    """Mean cross-entropy over the answer (+EOS) tokens of the held-out rows, the base + adapter in fp32."""
    import torch

    from medchat.core.model import ModelSpec, load
    from medchat.core.prompting import encode_example

    on_cpu = SETUP["device"] == "cpu"
    spec = ModelSpec(base=SETUP["base"], adapter=adapter_dir or None, dtype="fp32" if on_cpu else "auto",
                     device=SETUP["device"], quantization=SETUP["quantization"], merge=on_cpu)
    loaded = load(spec)
    model, tokenizer = loaded.model, loaded.tokenizer
    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            enc = encode_example(tokenizer, row["question"], row["answer"], style=style, max_length=512)
            ids = torch.tensor([enc.input_ids], device=model.device)
            labels = torch.tensor([enc.labels], device=model.device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((target != -100).sum())
    return total / count


def _load_base():
    from medchat.core.model import ModelSpec, load

    if SETUP["device"] == "cpu":
        loaded = load(ModelSpec(base=SETUP["base"], dtype="fp32", device="cpu", quantization="none"))
    else:  # 4-bit NF4 base with bf16/fp16 compute, as QLoRA does
        loaded = load(ModelSpec(base=SETUP["base"], device=SETUP["device"], quantization=SETUP["quantization"]))
    loaded.model.config.use_cache = False
    return loaded


def _lora(model):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if SETUP["quantization"] == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))


def _precision() -> dict:
    from medchat.core.model import cpu_supports_bf16

    if SETUP["device"] == "cpu":
        return {"bf16": cpu_supports_bf16(), "use_cpu": True, "optim": "adamw_torch"}
    import torch

    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16, "optim": SETUP["optim"]}


def run_seed(train_rows, out_dir: Path, seed: int):
    import transformers
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT, build_messages, render_prompt

    transformers.set_seed(seed)
    loaded = _load_base()
    tokenizer = loaded.tokenizer
    tokenizer.pad_token = tokenizer.eos_token  # as the seed notebook did
    model = _lora(loaded.model)
    texts = [render_prompt(tokenizer, build_messages(r["question"], DEFAULT_SYSTEM_PROMPT), "seed") + r["answer"]
             + tokenizer.eos_token for r in train_rows]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], padding="max_length", truncation=True, max_length=512),
        batched=True, remove_columns=["text"])
    meter = Meter(model)
    args = TrainingArguments(output_dir=str(out_dir / "ck"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=4, num_train_epochs=1, logging_steps=25, save_strategy="no",
                             report_to="none", disable_tqdm=True, seed=seed, **OPTIM, **_precision())
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[meter.callback])
    trainer.train()
    model.save_pretrained(out_dir / "adapter")
    return meter, str(out_dir / "adapter"), "seed"


def run_trl(train_rows, out_dir: Path, seed: int):
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT

    transformers.set_seed(seed)
    loaded = _load_base()
    model = _lora(loaded.model)
    dataset = Dataset.from_list([{
        "prompt": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": r["question"]}],
        "completion": [{"role": "assistant", "content": r["answer"]}],
    } for r in train_rows])
    meter = Meter(model)
    precision = _precision()
    precision.pop("bf16", None), precision.pop("fp16", None)  # TRL's default: bf16 on
    args = SFTConfig(output_dir=str(out_dir / "ck"), num_train_epochs=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, seed=seed, **OPTIM, **precision)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=loaded.tokenizer,
                         callbacks=[meter.callback])
    trainer.train()
    model.save_pretrained(out_dir / "adapter")
    return meter, str(out_dir / "adapter"), "chat"


def run_medchat(n_train: int, data_file: Path, out_dir: Path, seed: int):
    from trainer import train as train_mod

    cfg = _config(n_train, data_file)
    holder = {}
    original = train_mod._attach_lora

    def attach(cfg_, model, hw):  # hook the meter onto the exact model medchat-train trains
        peft_model = original(cfg_, model, hw)
        holder["meter"] = Meter(peft_model)
        return peft_model

    class _Late:
        """Forwards callback events to the meter created once the model exists."""

        def __getattr__(self, name):
            def forward(*args, **kwargs):
                meter = holder.get("meter")
                return getattr(meter.callback, name)(*args, **kwargs) if meter else None
            return forward

    train_mod._attach_lora = attach
    try:
        result = train_mod.train(cfg, output_dir=out_dir / "run", progress=False, extra_callbacks=(_Late(),))
    finally:
        train_mod._attach_lora = original
    return holder["meter"], str(result.run.path / "adapter"), cfg.prompt_style


def child(args) -> int:
    _common.setup()
    import warnings

    warnings.filterwarnings("ignore")
    payload = json.loads(Path(args.child_input).read_text())
    SETUP.update(payload.get("setup", {}))
    LORA["target_modules"] = payload.get("lora_targets", LORA["target_modules"])
    train_rows, eval_rows = payload["train"], payload["eval"]
    out_dir = Path(args.child_output).parent
    if args.child == "base":
        result = {"heldout_loss_chat": heldout_loss("", eval_rows, "chat"),
                  "heldout_loss_seed": heldout_loss("", eval_rows, "seed")}
    else:
        if args.child == "seed":
            meter, adapter, style = run_seed(train_rows, out_dir, 42)
        elif args.child == "trl":
            meter, adapter, style = run_trl(train_rows, out_dir, 42)
        else:
            meter, adapter, style = run_medchat(len(train_rows), Path(payload["data_file"]), out_dir, 42)
        seconds = meter.ended - meter.began
        result = {"seconds": seconds, "steps": meter.steps, "model_tokens": meter.tokens,
                  "peak_rss_mb": meter.peak_rss_mb, "peak_gpu_mb": meter.peak_gpu_mb, "style": style,
                  "heldout_loss": heldout_loss(adapter, eval_rows, style)}
    Path(args.child_output).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="training examples (optimizer steps = n / 8)")
    parser.add_argument("--quick", action="store_true", help="48 examples: a smoke run")
    parser.add_argument("--heldout", type=int, default=200,
                        help="held-out rows scored after training, beyond medchat's own split (not trained on)")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--no-base", action="store_true", help="skip the untrained base's held-out loss")
    parser.add_argument("--data", default=str(DATA_FILE), help="question/answer JSONL (default: wikidoc patient info)")
    parser.add_argument("--base", default="bundled", help="base model (GPU check: a local TinyLlama-shaped dir)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quantization", default="none", choices=["none", "nf4"])
    parser.add_argument("--optim", default="adamw_torch", help="optimizer on CUDA (the seed: paged_adamw_32bit)")
    parser.add_argument("--lora-targets", default=",".join(LORA["target_modules"]))
    parser.add_argument("--child", choices=[*RECIPES, "base"], help=argparse.SUPPRESS)
    parser.add_argument("--child-input", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    _common.setup()
    data_file = Path(args.data)
    if not data_file.is_file():
        print(f"{data_file} is absent: this benchmark needs ../shared/data (see its README) or --data FILE.")
        return 1
    SETUP.update(base=args.base, device=args.device, quantization=args.quantization, optim=args.optim)
    LORA["target_modules"] = [t for t in args.lora_targets.split(",") if t]
    n_train = 48 if args.quick else args.n

    from transformers import AutoTokenizer

    from medchat.core.model import resolve_base
    from medchat.core.prompting import encode_example
    from trainer import data as data_mod

    cfg = _config(n_train, data_file)
    prepared = data_mod.prepare(cfg)
    train_rows = [r.as_json() for r in prepared.train]
    eval_rows = [r.as_json() for r in prepared.eval] + extra_heldout(cfg, prepared, args.heldout)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(args.base))
    answer_toks = sum(encode_example(tokenizer, r["question"], r["answer"], max_length=512).answer_tokens
                      for r in train_rows)
    _common.log(f"{len(train_rows)} training rows, {len(eval_rows)} held out; {answer_toks} answer tokens")

    work = Path(tempfile.mkdtemp(prefix="medchat-train-bench-"))
    (work / "input.json").write_text(json.dumps({"train": train_rows, "eval": eval_rows, "data_file": str(data_file),
                                                 "setup": SETUP, "lora_targets": LORA["target_modules"]}))
    recipes = [r for r in args.recipes.split(",") if r]
    results = {}
    for recipe in recipes + ([] if args.no_base else ["base"]):
        out = work / recipe / "result.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        _common.log(f"running {recipe} (load {os.getloadavg()[0]:.1f})")
        started = time.perf_counter()
        env = {**os.environ, "MEDCHAT_RUNS_DIR": str(work / "runs")}
        proc = subprocess.run([sys.executable, __file__, "--child", recipe, "--child-input", str(work / "input.json"),
                               "--child-output", str(out)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            _common.log(f"{recipe} failed:\n{proc.stderr[-3000:]}")
            results[recipe] = {"error": proc.stderr[-500:]}
            continue
        results[recipe] = json.loads(out.read_text())
        results[recipe]["wall_s"] = time.perf_counter() - started
        results[recipe]["loadavg_after"] = os.getloadavg()[0]
        _common.log(f"{recipe}: {results[recipe]}")

    rows = []
    for recipe in recipes:
        r = results.get(recipe, {})
        if "seconds" not in r:
            rows.append({"name": recipe})
            continue
        rows.append({"name": recipe, "seconds": r["seconds"], "steps": r["steps"],
                     "examples_s": len(train_rows) / r["seconds"], "answer_tok_s": answer_toks / r["seconds"],
                     "model_tok_s": r["model_tokens"] / r["seconds"], "peak_mb": r["peak_rss_mb"],
                     "peak_gpu_mb": r.get("peak_gpu_mb"),
                     "heldout_loss": r["heldout_loss"]})
    base = results.get("base", {})
    if "heldout_loss_chat" in base:
        rows.append({"name": "untrained base", "heldout_loss": base["heldout_loss_chat"]})
    memory = ("peak_gpu_mb", "peak GPU MB") if args.device == "cuda" else ("peak_mb", "peak RSS MB")
    columns = [("seconds", "train s"), ("steps", "steps"), ("examples_s", "examples/s"),
               ("answer_tok_s", "answer tok/s"), ("model_tok_s", "model tok/s"), memory,
               ("heldout_loss", "held-out loss")]
    tables = []
    for baseline in ("seed", "trl"):
        if any(r["name"] == baseline and "seconds" in r for r in rows):
            tables.append(_common.ratio_table(rows, columns, baseline=baseline,
                                              ratio_of=[("examples_s", True), ("heldout_loss", False)]))
    where = "CPU" if args.device == "cpu" else f"{args.device} {args.quantization}"
    print(f"\nTraining throughput: {args.base} + LoRA r=16 on {','.join(LORA['target_modules'])}, {where}, {len(train_rows)} "
          f"examples ({answer_toks} answer tokens), {len(eval_rows)} held out\n")
    print("\n\n".join(tables))
    if "heldout_loss_seed" in base:
        print(f"- untrained base held-out loss in the seed's ### format: {base['heldout_loss_seed']:.3f} "
              "(the seed row is scored in that format)")
    print("- targets: medchat >= 3x seed and >= 1.2x TRL examples/s, held-out loss equal or better")
    path = _common.write_json("train_throughput" if args.device == "cpu" else "train_throughput_gpu", {"setup": SETUP,"n_train": len(train_rows), "n_eval": len(eval_rows),
                                                   "answer_tokens": answer_toks, "results": results, "rows": rows,
                                                   "lora": LORA, "optim": OPTIM, "tables": tables})
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
