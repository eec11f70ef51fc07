"""Side-by-side training speed of the batching modes (same examples, same LoRA, same process).

    .venv/bin/python bench/batching_modes.py --data ../shared/data/train/medical_meadow_wikidoc_patient_info.jsonl -n 48

Prints trained tokens/s per mode and the ratio to per-batch padding in random order. Modes are interleaved
batch by batch so a noisy shared machine affects them alike.
"""

from __future__ import annotations

import time

import click


@click.command()
@click.option("--data", "sources", multiple=True, required=True)
@click.option("-n", "n_examples", default=48, show_default=True)
@click.option("--preset", default="cpu-smollm2", show_default=True)
@click.option("--base", default=None)
@click.option("--rounds", default=1, show_default=True)
def main(sources, n_examples, preset, base, rounds):
    import torch

    from medchat.core.model import ModelSpec, load

    from . import data as d
    from .config import load_config
    from .train import _attach_lora, _system_prompt, resolve_hardware

    overrides = {"data": list(sources), "limit": n_examples + 2, "eval_fraction": 0.02}
    if base:
        overrides["base"] = base
    cfg = load_config(preset, overrides=overrides)
    hw = resolve_hardware(cfg)
    loaded = load(ModelSpec(base=cfg.base, quantization="none", device="cpu", dtype="fp32"))
    loaded.model.config.use_cache = False
    model = _attach_lora(cfg, loaded.model, hw)
    model.train()
    rows = d.prepare(cfg).train[:n_examples]
    enc = d.encode_rows(loaded.tokenizer, rows, cfg.prompt_style, _system_prompt(cfg), cfg.max_length)
    ds = d.EncodedDataset(enc)
    bs = cfg.batch_size
    pad = loaded.tokenizer.pad_token_id
    modes = {  # name: (sampler, collator, batch size, pad every example to max_length like the seed)
        "seed: pad-512 bs2": (d.SeededLengthSampler(ds.lengths, 2, cfg.seed, False), d.Collator(pad), 2, True),
        "pad-batch random": (d.SeededLengthSampler(ds.lengths, bs, cfg.seed, False), d.Collator(pad), bs, False),
        "pad-batch grouped": (d.SeededLengthSampler(ds.lengths, bs, cfg.seed, True), d.Collator(pad), bs, False),
        "packed": (d.SeededLengthSampler(ds.lengths, bs, cfg.seed, False), d.Collator(pad, True, cfg.max_length),
                   bs, False),
    }
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batches = {}
    for name, (sampler, collate, size, fixed) in modes.items():
        order = list(sampler)
        out = []
        for i in range(0, len(order), size):
            feats = [ds[j] for j in order[i:i + size]]
            real = sum(len(f["input_ids"]) for f in feats)
            if fixed:  # the seed padded every example to max_length
                feats = [{"input_ids": f["input_ids"] + [pad] * (cfg.max_length - len(f["input_ids"])),
                          "labels": f["labels"] + [-100] * (cfg.max_length - len(f["labels"]))} for f in feats]
            batch = collate(feats)
            if fixed:
                batch["attention_mask"] = torch.tensor(
                    [[1] * len(ds[j]["input_ids"]) + [0] * (cfg.max_length - len(ds[j]["input_ids"]))
                     for j in order[i:i + size]])
            batch["num_tokens"] = torch.tensor(real)
            out.append(batch)
        batches[name] = out
    seconds = dict.fromkeys(modes, 0.0)
    tokens = dict.fromkeys(modes, 0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=hw.precision == "bf16")
    for _ in range(rounds):
        for step in range(max(len(b) for b in batches.values())):
            for name, blist in batches.items():
                if step >= len(blist):
                    continue
                batch = dict(blist[step])
                n = int(batch.pop("num_tokens"))
                t0 = time.perf_counter()
                with autocast:
                    loss = model(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
                seconds[name] += time.perf_counter() - t0
                tokens[name] += n
    ref = tokens["pad-batch random"] / seconds["pad-batch random"]
    click.echo(f"{len(enc)} examples, batch {bs} (the seed mode: 2), LoRA r={cfg.lora_r} on {','.join(cfg.target_modules)}, "
               f"precision {hw.precision}")
    for name in modes:
        tps = tokens[name] / seconds[name]
        click.echo(f"{name:20s} {tps:8.1f} real tokens/s   x{tps / ref:.2f} vs pad-batch random")


if __name__ == "__main__":
    main()
