"""Exports of a run that other engines load: merged safetensors, a vLLM LoRA adapter, a GGUF, an Ollama model.

    result = export("20261202-101500-cpu-smollm2", "ollama")   # -> ExportResult(path, files, command, notes)

Every format is written into a temporary directory next to the target and renamed into place at the end, so
a failure leaves nothing half-written (and, with force, the old export stays until the new one is complete).

- merged: the adapter merged into a full-precision copy of the base, saved as bf16 safetensors with the
  tokenizer and its chat template: a plain transformers checkpoint.
- vllm: adapter_config.json + adapter_model.safetensors as `vllm serve --enable-lora` loads them. vLLM takes
  no `modules_to_save` and no DoRA, and refuses a rank above its `--max-lora-rank` (one of VLLM_LORA_RANKS,
  default 16): each is checked here, with the fix in the message.
- gguf: the merged model as a GGUF (Q8_0 by default: 4-bit re-quantization rounds a LoRA's delta away, see
  medchat.core.gguf_export). A GGUF base (the bundled SmolLM2) goes through medchat.core.gguf_export, the
  fast path's exporter; a transformers Llama base is written here from its merged weights, with the same
  tensor mapping, rotary permutation and encoders.
- ollama: that GGUF plus a Modelfile: the chat template rewritten in Ollama's Go-template syntax, medchat's
  system prompt, the stop tokens and medchat's decoding defaults.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from medchat.core.errors import MedchatError
from medchat.core.fileio import staged_dir

FORMATS = ("merged", "vllm", "gguf", "ollama")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values
VLLM_DEFAULT_MAX_RANK = 16
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(MedchatError):
    """The run cannot be exported as asked; the message says why and what to do."""


@dataclass
class Source:
    """What an export starts from: a LoRA adapter, the base it was trained on and the run's system prompt."""

    name: str
    adapter: Path
    base: str
    system_prompt: str
    home: Path  # where exports go by default (the run directory, or next to a bare adapter directory)


@dataclass
class ExportResult:
    path: Path
    files: list[str]
    command: str | None = None  # how to serve or load it
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- what to export, where


def resolve_source(ref: str | os.PathLike) -> Source:
    """RUN as the other commands take it (id, path, 'default'), or a bare adapter directory."""
    from medchat.core import paths
    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT

    from medchat.core.runs import RunDir, RunError, resolve_run

    folder = Path(ref).expanduser()
    if (folder / "adapter_config.json").is_file():
        adapter, home, card = folder, folder.parent, {}
    else:
        try:
            run = RunDir(resolve_run(ref))
        except RunError as exc:
            raise ExportError(str(exc)) from None
        card = run.read()
        if not (run.adapter / "adapter_config.json").is_file():
            raise ExportError(f"{run.path} has no adapter yet (status {card.get('status', 'unknown')}); finish it "
                              f"with `medchat-train train --resume {run.path}` first.")
        adapter, home = run.adapter, run.path
        if run.path.resolve() == paths.DEFAULT_RUN_DIR.resolve():  # the shipped run is part of the installation
            home = paths.runs_root() / run.path.name
    meta_file = adapter / "medchat.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = meta.get("base") or card.get("base") or config.get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{adapter} does not say which base it was trained on (no medchat.json, and "
                          "adapter_config.json has no base_model_name_or_path).")
    system = meta.get("system_prompt") or card.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", meta.get("run_id") or card.get("id") or home.name).strip("-") or "medchat"
    return Source(name=name, adapter=adapter, base=base, system_prompt=system, home=home)


def export(ref: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, *, force: bool = False,
           max_lora_rank: int = VLLM_DEFAULT_MAX_RANK, gguf_type: str | None = None) -> ExportResult:
    """Export RUN in `fmt` to `out` (default: <run>/export/<fmt>; for the shipped run, under the runs root).
    Raises ExportError for a user mistake."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if fmt == "vllm" and max_lora_rank not in VLLM_LORA_RANKS:
        raise ExportError(f"--max-lora-rank {max_lora_rank} is not one vLLM accepts "
                          f"({', '.join(map(str, VLLM_LORA_RANKS))}).")
    source = resolve_source(ref)
    target = Path(out).expanduser() if out else source.home / "export" / fmt
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise ExportError(f"{target} already exists and is not empty; pass --force to replace it, or choose "
                          "another --out.")
    if fmt == "vllm":  # the cheap checks come before any model is loaded
        _check_vllm_adapter(source, max_lora_rank)
    writer = {"merged": _write_merged, "vllm": _write_vllm, "gguf": _write_gguf, "ollama": _write_ollama}[fmt]
    with staged_dir(target) as staging:  # an old export is removed only once the new one is in place
        command, notes = writer(source, staging, target, max_lora_rank=max_lora_rank, gguf_type=gguf_type)
    return ExportResult(target, sorted(p.name for p in target.iterdir()), command, notes)


# ---------------------------------------------------------------- merged


def _load_merged(source: Source):
    """The adapter merged into a full-precision (fp32) copy of the base: never merged into rounded weights."""
    from medchat.core.model import ModelError, ModelSpec, load

    try:
        return load(ModelSpec(base=source.base, adapter=str(source.adapter), merge=True, quantization="none",
                              device="cpu", dtype="fp32"))
    except ModelError as exc:
        raise ExportError(str(exc)) from None


def _write_merged(source: Source, staging: Path, target: Path, **_) -> tuple[str, list[str]]:
    import torch

    loaded = _load_merged(source)
    loaded.model.to(torch.bfloat16).save_pretrained(staging, safe_serialization=True)
    loaded.tokenizer.save_pretrained(staging)
    _write_meta(source, staging / "medchat.json")
    notes = [] if loaded.tokenizer.chat_template else [
        "the base has no chat template: medchat prompts it in its seed format (### System/Instruction/Response)."]
    return f"AutoModelForCausalLM.from_pretrained({str(target)!r})", notes


def _write_meta(source: Source, path: Path) -> None:
    path.write_text(json.dumps({"run_id": source.name, "base": source.base, "system_prompt": source.system_prompt,
                                "adapter": str(source.adapter.resolve())}, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- vLLM


def _check_vllm_adapter(source: Source, max_rank: int) -> dict:
    config = json.loads((source.adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{source.adapter} is a {config.get('peft_type')} adapter; vLLM serves LoRA adapters only.")
    if config.get("modules_to_save"):
        raise ExportError(f"{source.adapter} saves full copies of {', '.join(config['modules_to_save'])} "
                          "(modules_to_save), which vLLM's LoRA loader does not take: retrain without them, or "
                          "export --format merged and serve that.")
    if config.get("use_dora"):
        raise ExportError(f"{source.adapter} is a DoRA adapter, which vLLM does not serve: export --format merged.")
    rank = max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])
    if rank > max_rank:
        fits = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
        fix = (f"pass --max-lora-rank {fits} (the vllm serve command then says the same)" if fits else
               f"vLLM's largest is {VLLM_LORA_RANKS[-1]}")
        raise ExportError(f"run {source.name} has LoRA rank {rank}, above vLLM's --max-lora-rank {max_rank}: {fix}, "
                          f"or retrain with --lora-r {max_rank}.")
    return config


def _write_vllm(source: Source, staging: Path, target: Path, *, max_lora_rank: int, **_) -> tuple[str, list[str]]:
    from medchat.core.model import ModelError, read_adapter_config, resolve_base

    config = _check_vllm_adapter(source, max_lora_rank)
    try:
        read_adapter_config(str(source.adapter))  # refuses a pickle-only adapter
        base = resolve_base(source.base)  # the bundled GGUF becomes the transformers checkpoint it trained on
    except ModelError as exc:
        raise ExportError(str(exc)) from None
    config["base_model_name_or_path"] = base
    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(source.adapter / "adapter_model.safetensors", staging / "adapter_model.safetensors")
    command = (f"vllm serve {base} --enable-lora --lora-modules {source.name}={target} "
               f"--max-lora-rank {max_lora_rank}")
    notes = [f"ask for model {source.name!r} in requests, and send medchat's system prompt as the system message "
             "(vLLM applies the base's chat template)."]
    return command, notes


# ---------------------------------------------------------------- GGUF


def _write_gguf(source: Source, staging: Path, target: Path, *, gguf_type: str | None = None,
                **_) -> tuple[str, list[str]]:
    path = _gguf_into(source, staging, gguf_type)
    return f"llama-server -m {target / path.name}", []


def _gguf_into(source: Source, folder: Path, gguf_type: str | None) -> Path:
    from medchat.core import bundled, gguf_export

    try:
        qtype = gguf_export.run_type(gguf_type)
        path = folder / f"{source.name}-{qtype}.gguf"
        if source.base == "bundled" or source.base.endswith(".gguf"):
            from medchat.core.model import ModelSpec, resolve

            resolved = resolve(ModelSpec(base=source.base, adapter=str(source.adapter)))
            gguf_export.export_gguf(resolved, path, qtype)
            (folder / f"{path.name}.json").unlink(missing_ok=True)  # the fast-path cache's note; not part of it
        else:
            _hf_llama_gguf(_load_merged(source), path, qtype)
    except (gguf_export.ExportError, bundled.BundledModelError) as exc:
        raise ExportError(str(exc)) from None
    return path


def _hf_llama_gguf(loaded, path: Path, qtype: str) -> None:
    """Write a merged transformers Llama as a llama.cpp GGUF: medchat.core.gguf_export's tensor names, q/k
    permutation and encoders, with the architecture and tokenizer metadata llama.cpp reads (the way
    llama.cpp's convert_hf_to_gguf.py writes them for Llama)."""
    import gguf

    from medchat.core import gguf_export

    config = loaded.model.config
    if config.model_type not in ("llama", "mistral"):
        raise ExportError(f"the GGUF export writes Llama-architecture models; this base is {config.model_type!r}. "
                          "Export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py.")
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"rope scaling {rope.get('rope_type')!r} is not written by this exporter; export --format "
                          "merged and convert it with llama.cpp's convert_hf_to_gguf.py.")
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(gguf.LlamaFileType[f"MOSTLY_{qtype.upper()}"]))
    _add_tokenizer(writer, loaded.tokenizer, config.vocab_size)

    state = {k: v.detach().float().numpy() for k, v in loaded.model.state_dict().items()}
    names = ["token_embd.weight", "output_norm.weight"]
    if not config.tie_word_embeddings:
        names.append("output.weight")
    names += [f"blk.{i}.{part}.weight" for i in range(config.num_hidden_layers) for part in gguf_export._LAYER_MAP]
    T = gguf.GGMLQuantizationType
    for name in names:
        weights = state[gguf_export.hf_name(name)]
        if ".attn_q." in name:
            weights = gguf_export.permute_qk(weights, n_head, n_head)
        elif ".attn_k." in name:
            weights = gguf_export.permute_qk(weights, n_head, n_kv)
        data, raw_dtype = gguf_export._encode(weights, T[qtype.upper()] if weights.ndim == 2 else T.F32)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Tokens, types, merges, special ids and the chat template, from the saved tokenizer files."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        folder = Path(tmp)
        try:
            vocab, model = gguf.vocab.BpeVocab(folder), "gpt2"  # byte-level BPE (SmolLM2, Llama 3, Qwen)
        except FileNotFoundError:
            vocab, model = gguf.vocab.LlamaHfVocab(folder), "llama"  # byte-fallback BPE (Llama 2, TinyLlama)
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text.encode("utf-8") if isinstance(text, str) else text)
            scores.append(score)
            types.append(kind)
        for i in range(len(tokens), vocab_size):  # an embedding padded past the tokenizer
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model(model)
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=model == "gpt2", n_vocab=vocab_size)
        if special.chat_template is None and tokenizer.chat_template:
            special.chat_template = tokenizer.chat_template
        special.add_to_gguf(writer, quiet=True)


# ---------------------------------------------------------------- Ollama


@dataclass(frozen=True)
class TurnFormat:
    """A chat template as fixed text around each turn: what Ollama's Go templates can express."""

    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str

    def render(self, messages: list[dict]) -> str:
        """This format rendered for a conversation ending with a user turn, as the Go template renders it."""
        out = []
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "system":
                out.append(self.system_prefix + content + self.system_suffix)
            elif role == "user":
                out.append(self.user_prefix + content + self.user_suffix
                           + (self.generation_prompt if i == len(messages) - 1 else ""))
            else:
                out.append(self.assistant_prefix + content + self.assistant_suffix)
        return "".join(out)

    def go_template(self) -> str:
        """Ollama's TEMPLATE (Go text/template over .System and .Messages), with no whitespace trimming, since
        the literal text around the turns carries meaningful newlines."""
        return ("{{ if .System }}" + self.system_prefix + "{{ .System }}" + self.system_suffix + "{{ end }}"
                "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
                '{{ if eq .Role "user" }}' + self.user_prefix + "{{ .Content }}" + self.user_suffix
                + "{{ if $last }}" + self.generation_prompt + "{{ end }}"
                '{{ else if eq .Role "assistant" }}' + self.assistant_prefix + "{{ .Content }}"
                + self.assistant_suffix + "{{ end }}{{ end }}")


_PROBE = {"system": "\u2e3aSYSTEM\u2e3a", "user": "\u2e3aUSER{}\u2e3a", "assistant": "\u2e3aASSISTANT{}\u2e3a"}


def turn_format(tokenizer) -> TurnFormat:
    """Read the text around each turn off the tokenizer's chat template by rendering marker conversations, and
    check the result on a longer one: a template with logic beyond a fixed per-role format is refused."""
    sys_, u1, a1, u2 = _PROBE["system"], _PROBE["user"].format(1), _PROBE["assistant"].format(1), _PROBE["user"].format(2)

    def render(*contents, generation=False):
        roles = ["system", "user", "assistant", "user"]
        messages = [{"role": r, "content": c} for r, c in zip(roles, contents)]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    if not tokenizer.chat_template:
        raise ExportError("the base has no chat template (the run used medchat's seed format), so there is none to "
                          "give Ollama; export --format gguf and prompt it yourself.")
    try:
        full, plain, up_to_answer = render(sys_, u1, a1, u2, generation=True), render(sys_, u1, a1, u2), \
            render(sys_, u1, a1)
        head, rest = full.split(sys_)
        system_suffix_user, rest = rest.split(u1)
        user_suffix_assistant, rest = rest.split(a1)
        assistant_suffix_user, _ = rest.split(u2)
        user_suffix = plain.split(u2)[1]
        assistant_suffix = up_to_answer.split(a1)[1]
        assert full.startswith(plain) and user_suffix_assistant.startswith(user_suffix)
        assert assistant_suffix_user.startswith(assistant_suffix)
        user_prefix = assistant_suffix_user[len(assistant_suffix):]
        assert system_suffix_user.endswith(user_prefix)
        fmt = TurnFormat(head, system_suffix_user[:len(system_suffix_user) - len(user_prefix)], user_prefix,
                         user_suffix, user_suffix_assistant[len(user_suffix):], assistant_suffix,
                         full[len(plain):])
        check = [{"role": "system", "content": "Be brief."}] + [
            {"role": r, "content": f"{r} turn {i}"} for i in range(3) for r in ("user", "assistant")][:-1]
        assert fmt.render(check) == tokenizer.apply_chat_template(check, tokenize=False, add_generation_prompt=True)
    except (AssertionError, ValueError) as exc:
        raise ExportError("the base's chat template is not a fixed text around each turn, so it cannot be written "
                          f"as an Ollama template ({type(exc).__name__}); export --format gguf and write the "
                          "Modelfile's TEMPLATE by hand.") from None
    if any('"""' in part or "{{" in part for part in fmt.__dict__.values()):
        raise ExportError('the chat template contains """ or {{, which a Modelfile TEMPLATE cannot hold verbatim.')
    return fmt


def modelfile(gguf_name: str, fmt: TurnFormat, system_prompt: str, stops: list[str], settings, context: int) -> str:
    """The Modelfile text: FROM the GGUF next to it, TEMPLATE, SYSTEM, stop tokens, medchat's decoding defaults."""
    if '"""' in system_prompt:
        raise ExportError('the system prompt contains """, which a Modelfile SYSTEM cannot hold.')
    lines = [
        "# Exported by medchat-train. Ollama serves the model alone: medchat's guard, emergency notice and",
        "# physician reminder are not part of it.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{fmt.go_template()}"""',
        f'SYSTEM """{system_prompt}"""',
        *(f"PARAMETER stop {json.dumps(stop)}" for stop in stops),
        f"PARAMETER temperature {settings.temperature:g}",
        f"PARAMETER top_p {settings.top_p:g}",
        f"PARAMETER repeat_penalty {settings.repetition_penalty:g}",
        f"PARAMETER num_predict {settings.max_new_tokens}",
        f"PARAMETER num_ctx {context}",
    ]
    return "\n".join(lines) + "\n"


def _write_ollama(source: Source, staging: Path, target: Path, *, gguf_type: str | None = None,
                  **_) -> tuple[str, list[str]]:
    from medchat.core.settings import SettingsError, load_defaults

    tokenizer, context = _tokenizer_and_context(source)
    fmt = turn_format(tokenizer)  # before the (slow) GGUF, so a template Ollama cannot take fails at once
    try:
        settings = load_defaults()
    except SettingsError as exc:
        raise ExportError(str(exc)) from None
    path = _gguf_into(source, staging, gguf_type)
    stops = list(dict.fromkeys(s for s in (fmt.assistant_suffix.strip(), tokenizer.eos_token) if s))
    (staging / "Modelfile").write_text(modelfile(path.name, fmt, source.system_prompt, stops, settings, context),
                                       encoding="utf-8")
    notes = [] if settings.no_repeat_ngram_size == 0 else [
        f"Ollama has no no_repeat_ngram_size (medchat uses {settings.no_repeat_ngram_size}); repeat_penalty is kept."]
    return f"ollama create {source.name.lower()} -f {target / 'Modelfile'}", notes


def _tokenizer_and_context(source: Source):
    """The run's tokenizer (saved with the adapter, else the base's) and the base's context length."""
    from transformers import AutoConfig, AutoTokenizer

    from medchat.core.model import ModelError, resolve_base

    try:
        base = resolve_base(source.base)
        folder = source.adapter if (source.adapter / "tokenizer_config.json").is_file() else base
        tokenizer = AutoTokenizer.from_pretrained(folder)
        context = int(getattr(AutoConfig.from_pretrained(base), "max_position_embeddings", 2048))
    except (ModelError, OSError, ValueError) as exc:
        raise ExportError(f"could not read the tokenizer of {source.base!r}: {str(exc).splitlines()[0][:300]}") from None
    return tokenizer, context
