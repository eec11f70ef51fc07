"""LoRA / QLoRA fine-tuning that records a complete run directory.

Why transformers' Trainer and not TRL's SFTTrainer: our examples are already tokenized with answer-only labels
by medchat.core.prompting.encode_example (the same function metrics uses for perplexity), so SFTTrainer's own
formatting, masking and packing layer would only be bypassed or would disagree with it. Trainer alone gives
what we need and nothing to fight: checkpoints with optimizer/scheduler/RNG state and exact resume, eval
during training, early stopping, gradient checkpointing, paged 8/32-bit optimizers, AMP, and DDP under
`accelerate launch` / torchrun without code changes. We add a seeded sampler (the data order depends only
on seed and epoch; optionally length-grouped), per-batch padding or packing, batches run as passes over rows
of similar length (little padding, bounded memory), real tokens/s, a rich progress bar, the loss log and the
run card.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medchat.core import paths
from medchat.core.errors import MedchatError
from medchat.core.prompting import IGNORE_INDEX
from medchat.core.runs import RunDir, atomic_write_json, git_commit, library_versions, new_run_id, now_iso, resolve_run

from . import data as data_mod
from .config import TrainConfig, from_resolved_yaml, to_yaml


class TrainError(MedchatError):
    """Training cannot start or continue; the message says why and what to do."""


# ---------------------------------------------------------------- device / precision / optimizer


@dataclass
class Resolved:
    device: str
    precision: str  # bf16 | fp16 | fp32 (mixed precision mode)
    model_dtype: str  # dtype the base weights are loaded in
    quantization: str
    optimizer: str
    notes: tuple[str, ...] = ()  # one-line notes for the console (NF4 on CPU is slow, the optimizer fallback)

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


def resolve_hardware(cfg: TrainConfig, cuda: bool | None = None) -> Resolved:
    """Pick device, precision, 4-bit and optimizer; say clearly what this machine lacks for the preset."""
    from medchat.core.model import cpu_supports_bf16

    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    device = cfg.device if cfg.device != "auto" else ("cuda" if cuda else "cpu")
    lacks = []
    if device == "cuda" and not cuda:
        lacks.append("--device cuda (no CUDA GPU is visible)")
    quant = cfg.quantization
    if quant == "auto":
        quant = "nf4" if device == "cuda" else "none"
    notes = []
    # NF4 on CPU runs (bitsandbytes' CPU kernels, slowly) but only when the CPU is asked for explicitly.
    if quant == "nf4" and device != "cuda" and cfg.device != "cpu":
        lacks.append("4-bit NF4 quantization (QLoRA on CPU is slow: pass --device cpu to run it anyway)")
    elif quant == "nf4" and device == "cpu":
        from medchat.core.model import CPU_NF4_NOTE

        notes.append(CPU_NF4_NOTE)
    optimizer = cfg.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_32bit" if quant == "nf4" and device == "cuda" else "adamw_torch"
        if quant == "nf4" and device != "cuda":
            notes.append("paged AdamW is CUDA-only: using torch AdamW.")
    if optimizer in ("paged_adamw_32bit", "adamw_8bit") and device != "cuda":
        lacks.append(f"the {optimizer} optimizer (bitsandbytes, CUDA only)")
    precision = cfg.precision
    if precision == "auto":
        if device == "cuda":
            import torch

            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device != "cuda":
        lacks.append("fp16 mixed precision (CUDA only; CPUs use bf16 or fp32)")
    if lacks:
        what = f"preset '{cfg.preset}'" if cfg.preset else "this configuration"
        raise TrainError(
            f"{what} needs a CUDA GPU for: " + "; ".join(lacks) + f". This machine has "
            f"{'a CUDA GPU' if cuda else 'no CUDA GPU'}. Run it on a GPU, use --preset cpu-smollm2, or override "
            "for CPU: --device cpu --quantization none --optimizer adamw_torch --dtype auto."
        )
    # The frozen base never updates, so it needs no fp32 master copy: a 4-bit or bf16 run keeps it in the compute
    # dtype (faster on CPU at the same held-out loss: bench/train_throughput.py). LoRA weights stay fp32
    # (PEFT upcasts them). fp16 keeps fp32 weights and autocasts: fp16 activations overflow more easily.
    model_dtype = precision if quant == "nf4" or precision == "bf16" else "fp32"
    return Resolved(device, precision, model_dtype, quant, optimizer, tuple(notes))


# ---------------------------------------------------------------- the run


@dataclass
class TrainResult:
    run: RunDir
    status: str
    final: dict[str, Any]


# RANK and WORLD_SIZE are set per process by torchrun / accelerate launch, not by the user.
def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _shared_run_path(path: Path) -> Path:
    """Under DDP every process must write to the run directory the main process chose."""
    if _world_size() <= 1:
        return path
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState()  # initialises the process group (gloo on CPU, nccl on GPU)
    box = [str(path)]
    broadcast_object_list(box, from_process=0)
    return Path(box[0])


def prepare_run_dir(cfg: TrainConfig, output_dir: str | Path | None, name: str | None, overwrite: bool) -> RunDir:
    if output_dir:
        path = Path(output_dir).expanduser()
    else:
        path = paths.runs_root() / (name or new_run_id(cfg.preset))
    path = _shared_run_path(path)
    run = RunDir(path)
    if _is_main():
        if path.exists() and any(path.iterdir()):
            status = run.read().get("status") if run.run_json.exists() else None
            if not overwrite:
                if status == "complete":
                    raise TrainError(f"{path} already holds a complete run. Pick another --output-dir/--name, "
                                     "or pass --overwrite to replace it.")
                if status:
                    raise TrainError(f"{path} holds an unfinished run (status {status}). Continue it with "
                                     f"`medchat-train train --resume {path}`, or pass --overwrite to replace it.")
                raise TrainError(f"{path} exists and is not empty. Pick another --output-dir, or pass --overwrite.")
            if path.resolve() == paths.DEFAULT_RUN_DIR.resolve() and status is None:
                raise TrainError(f"refusing to overwrite {path}: it does not look like a run directory.")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    return run


def hyperparameters(cfg: TrainConfig, world: int = 1) -> dict[str, Any]:
    return {
        "learning_rate": cfg.learning_rate,
        "epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "effective_batch": cfg.batch_size * cfg.grad_accum * world,
        "lora_r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": list(cfg.target_modules),
        "max_length": cfg.max_length,
        "lr_scheduler": cfg.lr_scheduler,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "packing": cfg.packing,
        "group_by_length": cfg.group_by_length,
        "max_tokens_per_pass": cfg.max_tokens_per_pass,
    }


@dataclass
class _Job:
    """What a new or resumed run starts from: train() gathers it, _setup and _fit work from it."""

    cfg: TrainConfig
    hw: Resolved
    run: RunDir
    train_rows: list
    eval_rows: list
    manifest: dict[str, Any]
    record: dict[str, Any]
    checkpoint: Path | None = None
    prior_elapsed: float = 0.0  # seconds spent before a resume
    started: float = field(default_factory=time.time)
    state: dict[str, bool] = field(default_factory=lambda: {"interrupted": False})  # set by InterruptCallback

    def elapsed(self) -> float:
        return round(self.prior_elapsed + time.time() - self.started, 1)


@dataclass
class _Setup:
    """What _setup produces for _fit: the LoRA-wrapped model, its tokenizer and the encoded splits."""

    model: Any
    tokenizer: Any
    train_enc: list
    eval_enc: list


def train(
    cfg: TrainConfig | None = None,
    *,
    output_dir: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    progress: bool = True,
    console=None,
    extra_callbacks: tuple = (),
    extra_run_fields: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or resume) one run; returns when it is complete or interrupted. Raises TrainError/DataError/..."""
    from rich.console import Console

    console = console or Console(stderr=True)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizers library reads it at its first fork
    started = time.time()
    if resume:
        job = _resumed_job(resume)
    else:
        assert cfg is not None
        job = _new_job(cfg, output_dir, name, overwrite, extra_run_fields)
    job.started = started  # the elapsed time includes preparing the data
    run = job.run
    try:
        with _tracking_session(job.cfg, run, job.record, progress) as tracking:
            setup = _setup(job, console, progress, tracking)
            final = _fit(job, setup, console, progress, extra_callbacks)
            if job.state["interrupted"]:
                tracking.outcome = "interrupted"
    except KeyboardInterrupt:
        if _is_main():
            run.update(status="interrupted", elapsed_s=job.elapsed(),
                       notes=_note(run, "interrupted (Ctrl-C twice) before a checkpoint could be written"))
        raise
    except BaseException as exc:
        if _is_main() and run.run_json.exists():
            run.update(status="failed", elapsed_s=job.elapsed(), error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    status = "interrupted" if job.state["interrupted"] else "complete"
    return TrainResult(run, status, final)


def _resumed_job(resume: str | Path) -> _Job:
    """An interrupted run with its saved config, splits and manifest, from its latest checkpoint."""
    run = RunDir(_shared_run_path(resolve_run(resume)))
    if not run.config_yaml.is_file():
        raise TrainError(f"{run.path} has no config.yaml, so it is not a medchat-train run to resume.")
    cfg = from_resolved_yaml(run.config_yaml)
    previous = run.read()
    if previous.get("status") == "complete":
        raise TrainError(f"{run.path} is already complete; nothing to resume.")
    hw = resolve_hardware(cfg)
    _require_trackers(cfg)
    job = _Job(cfg, hw, run, data_mod.read_split(run.splits / "train.jsonl"),
               data_mod.read_split(run.splits / "eval.jsonl"), json.loads(run.manifest.read_text(encoding="utf-8")),
               previous, run.latest_checkpoint(), float(previous.get("elapsed_s") or 0.0))
    if _is_main():
        _truncate_loss_log(run, _checkpoint_step(job.checkpoint))
        run.update(status="running", resumed=now_iso(),
                   resumed_from=str(job.checkpoint) if job.checkpoint else None)
    return job


def _new_job(cfg: TrainConfig, output_dir, name, overwrite: bool, extra_run_fields) -> _Job:
    """A new run: hardware and trackers checked, data prepared, then the run directory and its card written."""
    hw = resolve_hardware(cfg)  # fail before touching data or the disk
    _require_trackers(cfg)
    prepared = data_mod.prepare(cfg)
    run = prepare_run_dir(cfg, output_dir, name, overwrite)
    record = {
        "id": run.id,
        "status": "running",
        "preset": cfg.preset,
        "created": now_iso(),
        "finished": None,
        "base": cfg.base,
        "prompt_style": cfg.prompt_style,
        "system_prompt": _system_prompt(cfg),
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "versions": library_versions("accelerate", "datasets", "bitsandbytes"),
        "elapsed_s": 0.0,
        "hyperparameters": hyperparameters(cfg, _world_size()),
        "resolved": hw.as_dict(),
        "world_size": _world_size(),
        "final": {},
        "notes": "",
    }
    record.update(extra_run_fields or {})
    if _is_main():
        run.write(record)
        run.config_yaml.write_text(to_yaml(cfg), encoding="utf-8")
        run.splits.mkdir(exist_ok=True)
        data_mod.write_jsonl(run.splits / "train.jsonl", prepared.train)
        data_mod.write_jsonl(run.splits / "eval.jsonl", prepared.eval)
        atomic_write_json(run.manifest, prepared.manifest)
    return _Job(cfg, hw, run, prepared.train, prepared.eval, prepared.manifest, record)


def _require_trackers(cfg: TrainConfig) -> None:
    """A tracker asked for but not installed fails here, in one line naming the extra, before any work."""
    from medchat.core.tracking import TrackingError, require

    try:
        require(cfg.report_to or [])
    except TrackingError as exc:
        raise TrainError(str(exc)) from None


@contextmanager
def _tracking_session(cfg: TrainConfig, run: RunDir, record: dict[str, Any], progress: bool):
    """The tracker runs for this training run (main process only: the Trainer's callbacks log from rank 0);
    run.json records where each one writes, also for a run that fails or is interrupted."""
    from medchat.core import tracking

    trackers = list(cfg.report_to or []) if _is_main() else []
    try:
        with tracking.session(trackers, run.path, run.id, previous=record.get("trackers"),
                              quiet=not progress) as session:
            if session.trackers:
                run.update(trackers=session.record)
            yield session
    except tracking.TrackingError as exc:
        raise TrainError(str(exc)) from None


def tracker_hyperparameters(cfg: TrainConfig, hw: Resolved, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the trackers get as hyperparameters: the resolved config, the hardware choices and a summary of the
    data manifest (sources, filter counts, split, token counts; the full manifest goes along as a file)."""
    from medchat.core.tracking import flatten

    tokens = {split: {k: v for k, v in summary.items() if not isinstance(v, dict)}  # no length histograms
              for split, summary in (manifest.get("tokens") or {}).items()}
    data = {k: v for k, v in manifest.items() if k not in ("sources", "tokens", "filters")}
    data["sources"] = [f"{s.get('source')} ({s.get('rows')} rows, sha256 {str(s.get('sha256') or '-')[:12]})"
                       for s in manifest.get("sources", [])]
    data["tokens"] = tokens
    return flatten({"config": cfg.as_dict(), "resolved": hw.as_dict(), "data": data})


def _note(run: RunDir, text: str) -> str:
    old = run.read().get("notes") or ""
    return f"{old}\n{text}".strip()


def _system_prompt(cfg: TrainConfig) -> str:
    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT

    return DEFAULT_SYSTEM_PROMPT if cfg.system_prompt is None else cfg.system_prompt


def _checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


def _truncate_loss_log(run: RunDir, step: int) -> None:
    """On resume, forget log lines written after the checkpoint we continue from (they will be redone)."""
    if not run.loss_log.exists():
        return
    keep = []
    for line in run.loss_log.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    from medchat.core.fileio import write_text_atomic

    write_text_atomic(run.loss_log, "".join(f"{line}\n" for line in keep))


def _load_model(cfg: TrainConfig, hw: Resolved):
    from medchat.core.model import ModelError, ModelSpec, load

    spec = ModelSpec(base=cfg.base, adapter=None, merge=False, quantization=hw.quantization, device=hw.device,
                     dtype=hw.model_dtype, trust_remote_code=cfg.trust_remote_code)
    try:
        return load(spec)
    except ModelError as exc:
        raise TrainError(str(exc)) from None


def _attach_lora(cfg: TrainConfig, model, hw: Resolved):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if hw.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        if hw.device == "cpu":
            from medchat.core.model import disable_cpu_packing

            disable_cpu_packing(model)  # its repacked kernel has no backward (see medchat.core.model)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        import torch

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__})
        raise TrainError(f"LoRA target modules {', '.join(cfg.target_modules)} do not match the base model "
                         f"({str(exc).splitlines()[0][:200]}). Its linear layers are: {', '.join(linear)}.") from None


def _setup(job: _Job, console, progress: bool, tracking) -> _Setup:
    """Load the base, encode both splits (their token counts go into the manifest), log the hyperparameters to
    the trackers and attach the LoRA."""
    import transformers

    cfg, hw, run, manifest = job.cfg, job.hw, job.run, job.manifest
    main = _is_main()
    if main and progress:
        console.print(f"[bold]medchat-train[/] run [cyan]{run.id}[/] -> {run.path}")
        console.print(f"  {len(job.train_rows)} train / {len(job.eval_rows)} eval examples | device {hw.device} | "
                      f"precision {hw.precision} | 4-bit {hw.quantization} | optimizer {hw.optimizer}")
        for note in hw.notes:
            console.print(f"  [yellow]note:[/] {note}")
    loaded = _load_model(cfg, hw)
    tokenizer = loaded.tokenizer
    if main and progress:
        console.print(f"  base: {loaded.info.summary()}")

    system = _system_prompt(cfg)
    train_enc = data_mod.encode_rows(tokenizer, job.train_rows, cfg.prompt_style, system, cfg.max_length)
    eval_enc = data_mod.encode_rows(tokenizer, job.eval_rows, cfg.prompt_style, system, cfg.max_length)
    if main and "tokens" not in manifest:
        from medchat.core.prompting import effective_style

        manifest["tokens"] = {"train": data_mod.token_summary(train_enc), "eval": data_mod.token_summary(eval_enc)}
        manifest["truncated"] = manifest["tokens"]["train"]["truncated"] + manifest["tokens"]["eval"]["truncated"]
        manifest["prompt_style"] = effective_style(tokenizer, cfg.prompt_style)
        manifest["max_length"] = cfg.max_length
        atomic_write_json(run.manifest, manifest)
    if main and tracking.trackers:
        tracking.log_hyperparameters(tracker_hyperparameters(cfg, hw, manifest), (run.config_yaml, run.manifest))
        if progress:
            console.print("  tracking: " + "; ".join(_where(name, rec) for name, rec in tracking.record.items()),
                          markup=False, highlight=False)

    # No KV cache while training: it is useless there, and with it transformers does not turn packed sequences'
    # restarting position ids into a block-diagonal mask (packed examples would attend to each other).
    loaded.model.config.use_cache = False
    transformers.set_seed(cfg.seed)  # LoRA init is seeded too
    return _Setup(_attach_lora(cfg, loaded.model, hw), tokenizer, train_enc, eval_enc)


@dataclass
class _Schedule:
    total_steps: int
    warmup: int
    eval_steps: int
    save_steps: int
    early: bool  # early stopping (best-model tracking needs a checkpoint at every evaluation)


def _schedule(cfg: TrainConfig, examples: int, world: int) -> _Schedule:
    steps_per_epoch = math.ceil(examples / (cfg.batch_size * world)) // cfg.grad_accum or 1
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total_steps)
    eval_steps = cfg.eval_steps or max(1, math.ceil(total_steps / 4))  # at most 4 evaluations, the last at the end
    save_steps = cfg.save_steps or eval_steps
    early = cfg.early_stopping_patience is not None
    if early and save_steps % eval_steps:
        save_steps = eval_steps
    return _Schedule(total_steps, int(warmup), eval_steps, save_steps, early)


def _training_args(cfg: TrainConfig, hw: Resolved, run: RunDir, plan: _Schedule, world: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=plan.warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=hw.optimizer,
        bf16=hw.precision == "bf16",
        fp16=hw.precision == "fp16",
        use_cpu=hw.device == "cpu",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps",
        eval_steps=plan.eval_steps,
        save_strategy="steps",
        save_steps=plan.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=plan.early,
        metric_for_best_model="eval_loss" if plan.early else None,
        greater_is_better=False if plan.early else None,
        seed=cfg.seed,
        # The Trainer's own TensorBoard / W&B / MLflow callbacks; medchat.core.tracking said where they write.
        report_to=list(cfg.report_to) if cfg.report_to else "none",
        run_name=run.id,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if world > 1 else None,
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if cfg.gradient_checkpointing else {}),
    )


def _make_trainer(job: _Job, setup: _Setup, plan: _Schedule, console, progress: bool, extra_callbacks: tuple):
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    from .callbacks import InterruptCallback, LossLogCallback, RichProgressCallback

    cfg, main = job.cfg, _is_main()
    callbacks = [*extra_callbacks, LossLogCallback(job.run), InterruptCallback(job.state, console if main else None)]
    if progress and main:
        callbacks.append(RichProgressCallback(console))
    if plan.early:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = MedchatTrainer(
        model=setup.model,
        args=_training_args(cfg, job.hw, job.run, plan, _world_size()),
        train_dataset=data_mod.EncodedDataset(setup.train_enc),
        # Sorted by length: evaluation batches then carry almost no padding (the order does not matter there).
        eval_dataset=data_mod.EncodedDataset(sorted(setup.eval_enc, key=len)),
        data_collator=data_mod.Collator(setup.tokenizer.pad_token_id, packing=cfg.packing, max_length=cfg.max_length),
        processing_class=setup.tokenizer,
        callbacks=callbacks,
        sampler_seed=cfg.seed,
        group_by_length=cfg.group_by_length,
        max_tokens_per_pass=cfg.max_tokens_per_pass,
        # On a GPU an extra pass costs more than padding does: split only what exceeds the budget.
        pass_overhead=data_mod.PASS_OVERHEAD_TOKENS if job.hw.device == "cpu" else cfg.max_tokens_per_pass,
    )
    trainer.remove_callback(PrinterCallback)  # the loss log and the rich bar replace its dict dumps
    return trainer


def _fit(job: _Job, setup: _Setup, console, progress: bool, extra_callbacks: tuple) -> dict[str, Any]:
    """Run the Trainer to the end (or to Ctrl-C), then record the outcome: the adapter, the guard index and
    the final figures for a complete run, the checkpoint to resume from for an interrupted one."""
    run, main = job.run, _is_main()
    plan = _schedule(job.cfg, len(setup.train_enc), _world_size())
    trainer = _make_trainer(job, setup, plan, console, progress, extra_callbacks)
    if main:
        run.update(status="running", params_trainable=sum(p.numel() for p in setup.model.parameters() if p.requires_grad),
                   params_total=sum(p.numel() for p in setup.model.parameters()), steps_planned=plan.total_steps,
                   warmup_steps=plan.warmup, eval_steps=plan.eval_steps, save_steps=plan.save_steps,
                   distributed=trainer.accelerator.distributed_type.value)  # NO, MULTI_GPU, MULTI_CPU, FSDP, ...

    trainer.train(resume_from_checkpoint=str(job.checkpoint) if job.checkpoint else None)
    elapsed = job.elapsed()
    if job.state["interrupted"]:
        if main:
            _record_interrupted(run, trainer.state.global_step, elapsed, console if progress else None)
        return {}
    final = _final_figures(trainer, plan.early)
    _save_adapter(trainer, setup.tokenizer, run, job.cfg, main)
    if main:
        notes = []
        if job.cfg.guard_index:
            note = _build_guard_index(run, job.train_rows, console if progress else None)
            if note:
                notes.append(note)
        run.update(status="complete", finished=now_iso(), elapsed_s=elapsed, final=final,
                   notes=_note(run, "\n".join(notes)) if notes else run.read().get("notes", ""))
        if progress:
            _print_summary(console, run, final, elapsed)
    return final


def _record_interrupted(run: RunDir, step: int, elapsed: float, console) -> None:
    ck = RunDir(run.path).latest_checkpoint()
    run.update(status="interrupted", elapsed_s=elapsed,
               notes=_note(run, f"interrupted at step {step}; checkpoint {ck.name if ck else 'none'}"
                                f"; continue with `medchat-train train --resume {run.path}`"))
    if console:
        console.print(f"[yellow]Interrupted[/] at step {step}. Resume with: medchat-train train --resume {run.path}")


def _final_figures(trainer, early: bool) -> dict[str, Any]:
    last = trainer.state.log_history[-2:] if trainer.state.log_history else []
    done = [e for e in last if "eval_loss" in e and e.get("step") == trainer.state.global_step]
    metrics = done[-1] if done else trainer.evaluate()  # the last step may already have been evaluated
    final = {
        "train_loss": _last_logged(trainer, "loss"),
        "train_loss_mean": _mean_train_loss(trainer),
        "eval_loss": round(float(metrics["eval_loss"]), 5),
        "tokens_per_s": trainer.tokens_per_s(),
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "steps": int(trainer.state.global_step),
        "epochs_done": round(float(trainer.state.epoch or 0), 3),
    }
    if early and trainer.state.best_model_checkpoint:
        final["best_checkpoint"] = Path(trainer.state.best_model_checkpoint).name
        final["best_eval_loss"] = trainer.state.best_metric
    return final


def _where(name: str, rec: dict[str, Any]) -> str:
    if name == "tensorboard":
        return f"tensorboard {rec['logdir']}"
    if name == "mlflow":
        return f"mlflow run {rec['run_id']} in {rec['tracking_uri']}"
    return f"wandb ({rec['mode']}) run {rec['run_id']} in {rec['dir']}"


def _save_adapter(trainer, tokenizer, run: RunDir, cfg: TrainConfig, main: bool) -> None:
    staging = run.path / ".adapter.tmp"
    if main and staging.exists():
        shutil.rmtree(staging)
    trainer.save_model(str(staging))  # unwraps DDP; writes on the main process only
    if main:
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; checkpoints keep their own copy
        # PEFT records the local path it loaded from (a cache dir); record the base as the user named it.
        adapter_config = staging / "adapter_config.json"
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = cfg.base
        adapter_config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(staging)
        (staging / "medchat.json").write_text(json.dumps({
            "base": cfg.base, "prompt_style": cfg.prompt_style, "system_prompt": _system_prompt(cfg),
            "max_length": cfg.max_length, "run_id": run.id}, indent=2) + "\n", encoding="utf-8")
        if run.adapter.exists():
            shutil.rmtree(run.adapter)
        os.replace(staging, run.adapter)


def _build_guard_index(run: RunDir, train_rows, console) -> str | None:
    """The guard's out-of-domain reference index from this run's training questions. A failure (no embedder
    installed, say) costs the run its own index, not the run: the chat falls back to the shipped one."""
    from medchat.core.guard import build_reference_index

    try:
        if console:
            console.print("  building the guard's reference index from the training questions ...")
        build_reference_index([r.question for r in train_rows], run.guard_index)
    except Exception as exc:
        return f"warning: guard index not built ({type(exc).__name__}: {str(exc)[:300]})"
    return None


def _last_logged(trainer, key: str):
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return round(float(entry[key]), 5)
    return None


def _mean_train_loss(trainer):
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return round(sum(losses) / len(losses), 5) if losses else None


def _print_summary(console, run: RunDir, final: dict[str, Any], elapsed: float) -> None:
    from rich.table import Table

    table = Table(title=f"run {run.id} complete", show_header=False)
    for key in ("steps", "epochs_done", "train_loss", "eval_loss", "tokens_per_s", "train_tokens"):
        table.add_row(key, str(final.get(key)))
    table.add_row("elapsed", f"{elapsed:.0f} s")
    table.add_row("adapter", str(run.adapter))
    console.print(table)


# ---------------------------------------------------------------- Trainer subclass


def answer_only_loss(model, inputs: dict[str, Any], num_items_in_batch=None):
    """The causal-LM loss over the supervised (answer) positions, computing the vocabulary projection
    only there: transformers projects every position (prompt and padding too) to the whole vocabulary
    and then ignores most of them, which is a fifth of a small model's compute and most of its
    activation memory. Same value and gradients as the model's own loss: the sum of the token
    cross-entropies divided by num_items_in_batch (the supervised tokens of the whole accumulated
    batch), or their mean without it."""
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    features = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = causal_lm.get_decoder()(**features).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    total = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp_min(1)
    return total / count


def _make_trainer_class():
    """The Trainer subclass, made on first use so that transformers is imported only when training. Long only
    because the class body is inside it; each of its methods is short and does one thing."""
    from transformers import Trainer

    class _MedchatTrainer(Trainer):
        """Seeded sampler, batches split into passes, real-token counting, tokens/s in every train log."""

        def __init__(self, *args, sampler_seed: int = 42, group_by_length: bool = False,
                     max_tokens_per_pass: int = 0, pass_overhead: int = data_mod.PASS_OVERHEAD_TOKENS, **kwargs):
            super().__init__(*args, **kwargs)
            self._sampler_seed = sampler_seed
            self._group_by_length = group_by_length
            self._max_tokens_per_pass = max_tokens_per_pass
            self._pass_overhead = pass_overhead
            self._local_tokens = 0
            self._train_seconds = 0.0
            self._session_tokens = 0
            self._t_last = None
            self._tokens_last = 0

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return data_mod.SeededLengthSampler(dataset.lengths, self.args.per_device_train_batch_size,
                                                self._sampler_seed, self._group_by_length)

        def training_step(self, model, inputs, num_items_in_batch=None):
            pieces = data_mod.split_batch(inputs, self._max_tokens_per_pass, self._pass_overhead)
            if len(pieces) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            if num_items_in_batch is None:  # each piece's loss must be a share of the whole batch's mean
                num_items_in_batch = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            return sum(super(_MedchatTrainer, self).training_step(model, piece, num_items_in_batch)
                       for piece in pieces)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            num = inputs.pop("num_tokens", None)
            if num is not None and model.training:
                self._local_tokens += int(num)
            if self.args.world_size > 1 or "labels" not in inputs:  # DDP needs its own forward
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with self.accelerator.autocast():  # accelerate autocasts model.forward, which this loss bypasses
                loss = answer_only_loss(model, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

        def prediction_step(self, model, inputs, *args, **kwargs):
            inputs.pop("num_tokens", None)
            return super().prediction_step(model, inputs, *args, **kwargs)

        def train(self, *args, **kwargs):
            self._t_last = time.perf_counter()
            return super().train(*args, **kwargs)

        def evaluate(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                if self._t_last is not None:
                    self._t_last += time.perf_counter() - t0  # eval time is not training time

        def log(self, logs, start_time=None):
            import torch

            local = torch.tensor(self._local_tokens, device=self.args.device)
            delta = int(self.accelerator.gather(local.reshape(1)).sum().item()) if self.args.world_size > 1 \
                else int(local.item())
            self._local_tokens = 0
            self.state.num_input_tokens_seen += delta
            self._session_tokens += delta
            if "loss" in logs and self._t_last is not None:
                now = time.perf_counter()
                window = now - self._t_last
                self._train_seconds += window
                tokens = self._session_tokens - self._tokens_last
                logs["tokens_per_s"] = round(tokens / window, 1) if window > 0 else None
                self._t_last = now
                self._tokens_last = self._session_tokens
            logs["tokens_seen"] = int(self.state.num_input_tokens_seen)
            super().log(logs, start_time)

        def tokens_per_s(self):
            if self._train_seconds <= 0:
                return None
            return round(self._tokens_last / self._train_seconds, 1)

    return _MedchatTrainer


class _LazyTrainer:
    _cls = None

    def __call__(self, *args, **kwargs):
        if _LazyTrainer._cls is None:
            _LazyTrainer._cls = _make_trainer_class()
        return _LazyTrainer._cls(*args, **kwargs)


MedchatTrainer = _LazyTrainer()
