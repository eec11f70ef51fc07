"""`medchat-train export`: each format loaded back by what would consume it, on a tiny random Llama and a tiny
LoRA run trained here: transformers for merged, PEFT for the vLLM adapter, the gguf reader for the GGUF, the
Modelfile's Go template evaluated (translated to Jinja) against the tokenizer's own chat template."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medchat.app.train_cli import main
from medchat.core.paths import ASSETS_DIR
from trainer.config import load_config
from trainer.export import ExportError, export
from trainer.train import train

SAMPLE = ASSETS_DIR / "sample_data" / "medical_qa_sample.jsonl"
CONVERSATION = [
    {"role": "system", "content": "You are a careful medical assistant."},
    {"role": "user", "content": "What is a fever?"},
    {"role": "assistant", "content": "A body temperature above 38 C."},
    {"role": "user", "content": "When should I see a doctor?"},
]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """Three LoRA steps at a large learning rate: lora_B moves well away from its zero init."""
    cfg = load_config("cpu-smollm2", overrides={
        "base": str(tiny_model_dir), "data": [str(SAMPLE)], "target_modules": "q_proj,k_proj,v_proj,o_proj",
        "batch_size": 4, "max_length": 256, "precision": "fp32", "max_steps": 3, "eval_steps": 3,
        "learning_rate": 5e-2, "warmup_steps": 0, "guard_index": False, "lora_r": 8, "system_prompt": "Be careful."})
    return train(cfg, output_dir=tmp_path_factory.mktemp("runs") / "tiny", progress=False).run


def _ids(tokenizer):
    return tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _peft_model(base_dir, adapter_dir, merge):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return (model.merge_and_unload() if merge else model).eval()


def test_merged_export_is_a_transformers_checkpoint_with_the_merged_logits(tiny_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export(tiny_run.path, "merged", tmp_path / "merged")
    assert {"model.safetensors", "config.json", "tokenizer.json", "medchat.json"} <= set(result.files)
    model = AutoModelForCausalLM.from_pretrained(result.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    assert model.dtype == torch.bfloat16
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    ids = _ids(tokenizer)
    exported = _logits(model, ids)
    reference = _logits(_peft_model(tiny_model_dir, tiny_run.adapter, merge=True), ids)  # PEFT's merge, fp32
    base = _logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), ids)
    fine_tune = (reference - base).abs().max()
    assert fine_tune > 5e-2  # the adapter changes the model, and the export keeps that change to bf16 rounding:
    assert (exported - reference).abs().max() < fine_tune / 10


def test_vllm_export_is_the_adapter_peft_loads_with_the_serve_command(tiny_run, tiny_model_dir, tmp_path):
    out = tmp_path / "vllm"
    proc = CliRunner().invoke(main, ["export", str(tiny_run.path), "--format", "vllm", "--out", str(out)])
    assert proc.exit_code == 0, proc.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert proc.stdout.strip() == (f"vllm serve {tiny_model_dir} --enable-lora --lora-modules tiny={out} "
                                   "--max-lora-rank 16")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and not config.get("modules_to_save") and config["base_model_name_or_path"] == str(
        tiny_model_dir)
    ids = _ids(tiny_run_tokenizer(tiny_run))
    exported = _peft_model(tiny_model_dir, out, merge=False)
    trained = _peft_model(tiny_model_dir, tiny_run.adapter, merge=False)
    assert torch.equal(_logits(exported, ids), _logits(trained, ids))


def tiny_run_tokenizer(run):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run.adapter)


def _edited_adapter(run, tmp_path, **changes):
    folder = tmp_path / "adapter"
    shutil.copytree(run.adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_vllm_export_refuses_what_vllm_refuses(tiny_run, tmp_path):
    wide = _edited_adapter(tiny_run, tmp_path, r=32)
    with pytest.raises(ExportError, match=r"LoRA rank 32, above vLLM's --max-lora-rank 16: pass --max-lora-rank 32"):
        export(wide, "vllm", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert export(wide, "vllm", tmp_path / "out", max_lora_rank=32).path.is_dir()  # a bare adapter dir works too
    shutil.rmtree(tmp_path / "adapter")
    saves_head = _edited_adapter(tiny_run, tmp_path, modules_to_save=["lm_head"])
    with pytest.raises(ExportError, match=r"lm_head \(modules_to_save\)"):
        export(saves_head, "vllm", tmp_path / "other")


def test_gguf_export_holds_the_merged_weights(tiny_run, tiny_model_dir, tmp_path):
    import gguf

    from medchat.core.gguf_export import hf_name, permute_qk

    result = export(tiny_run.path, "gguf", tmp_path / "gguf")
    assert result.files == ["tiny-q8_0.gguf"]
    reader = gguf.GGUFReader(str(result.path / "tiny-q8_0.gguf"))
    merged = _peft_model(tiny_model_dir, tiny_run.adapter, merge=True)
    config, state = merged.config, {k: v.numpy() for k, v in merged.state_dict().items()}
    names = {t.name for t in reader.tensors}
    assert names == {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{p}.weight" for i in range(2) for p in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v",
                                                          "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    for tensor in reader.tensors:
        expected = state[hf_name(tensor.name)]
        if ".attn_q." in tensor.name:
            expected = permute_qk(expected, config.num_attention_heads, config.num_attention_heads)
        elif ".attn_k." in tensor.name:
            expected = permute_qk(expected, config.num_attention_heads, config.num_key_value_heads)
        assert tuple(int(d) for d in reversed(tensor.shape)) == expected.shape, tensor.name
        kind = gguf.GGMLQuantizationType.Q8_0 if expected.ndim == 2 else gguf.GGMLQuantizationType.F32
        assert tensor.tensor_type == kind, tensor.name
        weights = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(expected.shape)
        # Q8_0: each block of 32 is scaled to its largest value / 127, so the error is at most half a step.
        assert np.abs(weights - expected).max() <= np.abs(expected).max() / 127 * 0.51 + 1e-6, tensor.name
    field = reader.get_field("tokenizer.chat_template")
    assert field is not None and "<|im_start|>" in field.contents()
    assert len(reader.get_field("tokenizer.ggml.tokens").contents()) == config.vocab_size
    assert reader.get_field("tokenizer.ggml.eos_token_id").contents() == config.eos_token_id


def _modelfile(path):
    """FROM / TEMPLATE / SYSTEM / PARAMETER entries of a Modelfile (triple-quoted values may span lines)."""
    text = path.read_text()
    entries = re.findall(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER) (?:"""(.*?)"""|([^\n]*))$', text, re.M | re.S)
    parsed: dict[str, list[str]] = {}
    for key, quoted, plain in entries:
        parsed.setdefault(key, []).append(quoted or plain)
    return parsed


def go_to_jinja(template: str) -> str:
    """Ollama's Go text/template constructs used in a TEMPLATE, rewritten as Jinja (an evaluator for the test)."""
    rules = [
        (r"if \.System", "{% if System %}"), (r"\.System", "{{ System }}"),
        (r"range \$i, \$_ := \.Messages", "{% for m in Messages %}"),
        (r"\$last := eq \(len \(slice \$\.Messages \$i\)\) 1", "{% set last = loop.last %}"),
        (r'if eq \.Role "(\w+)"', r'{% if m.Role == "\1" %}'), (r'else if eq \.Role "(\w+)"', r'{% elif m.Role == "\1" %}'),
        (r"\.Content", "{{ m.Content }}"), (r"if \$last", "{% if last %}"),
    ]
    stack, out = [], []

    def action(match):
        body = match.group(1).strip()
        if body == "end":
            return "{% end" + stack.pop() + " %}"
        for pattern, replacement in rules:
            if re.fullmatch(pattern, body):
                if body.startswith(("if ", "range ")):
                    stack.append("for" if body.startswith("range") else "if")
                return re.sub(pattern, replacement, body)
        raise AssertionError(f"unexpected Go template action {body!r}")

    out.append(re.sub(r"\{\{-?(.*?)-?\}\}", action, template))
    assert not stack
    return "".join(out)


def test_ollama_export_modelfile_renders_like_the_chat_template(tiny_run, tmp_path):
    import jinja2

    result = export(tiny_run.path, "ollama", tmp_path / "ollama")
    assert result.files == ["Modelfile", "tiny-q8_0.gguf"]
    assert result.command == f"ollama create tiny -f {result.path / 'Modelfile'}"
    entries = _modelfile(result.path / "Modelfile")
    assert entries["FROM"] == ["./tiny-q8_0.gguf"] and (result.path / entries["FROM"][0]).is_file()
    assert entries["SYSTEM"] == ["Be careful."]  # the run's system prompt
    params = [p.split(" ", 1) for p in entries["PARAMETER"]]
    assert ["stop", '"<|im_end|>"'] in params
    assert {k: v for k, v in params if k != "stop"} == {"temperature": "0", "top_p": "0.95", "repeat_penalty": "1.1",
                                                        "num_predict": "256", "num_ctx": "256"}
    template = jinja2.Environment(keep_trailing_newline=True).from_string(go_to_jinja(entries["TEMPLATE"][0]))
    tokenizer = tiny_run_tokenizer(tiny_run)
    # Ollama passes the SYSTEM as .System and the turns as .Messages.
    rendered = template.render(System=CONVERSATION[0]["content"],
                               Messages=[{"Role": m["role"], "Content": m["content"]} for m in CONVERSATION[1:]])
    assert rendered == tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)


def test_bad_input_is_one_clear_line_and_leaves_nothing(tiny_run, tmp_path):
    runner = CliRunner()
    proc = runner.invoke(main, ["export", "no-such-run", "--format", "merged"])
    assert proc.exit_code == 1 and "No run directory 'no-such-run'" in proc.output and "Traceback" not in proc.output

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    proc = runner.invoke(main, ["export", str(tiny_run.path), "--format", "vllm", "--out", str(taken)])
    assert proc.exit_code == 1 and "--force" in proc.output and len(proc.output.strip().splitlines()) == 1
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"id": "unfinished", "status": "interrupted"}))
    with pytest.raises(ExportError, match=r"has no adapter yet \(status interrupted\).*--resume"):
        export(unfinished, "merged")

    # A failure while writing (the base is gone) leaves the old export as it was and no staging directory.
    orphan = _edited_adapter(tiny_run, tmp_path, base_model_name_or_path=str(tmp_path / "gone"))
    (orphan / "medchat.json").unlink()
    with pytest.raises(ExportError, match="does not exist"):
        export(orphan, "merged", taken, force=True)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "taken", "unfinished"]


@pytest.mark.bundled
def test_shipped_run_exports_for_ollama_through_the_fast_path_exporter(tmp_path):
    """The bundled GGUF base: the GGUF comes from medchat.core.gguf_export with the shipped adapter merged."""
    import gguf
    import jinja2
    from transformers import AutoTokenizer

    from medchat.core.fileio import file_sha256
    from medchat.core.model import resolve_base
    from medchat.core.paths import DEFAULT_RUN_DIR
    from medchat.core.prompting import DEFAULT_SYSTEM_PROMPT

    result = export("default", "ollama", tmp_path / "ollama")
    assert result.files == ["Modelfile", "default-smollm2-q8_0.gguf"]
    reader = gguf.GGUFReader(str(result.path / "default-smollm2-q8_0.gguf"))
    assert reader.get_field("medchat.adapter_sha256").contents() == file_sha256(
        DEFAULT_RUN_DIR / "adapter" / "adapter_model.safetensors")
    assert {t.tensor_type for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2} == {
        gguf.GGMLQuantizationType.Q8_0}
    entries = _modelfile(result.path / "Modelfile")
    assert entries["SYSTEM"] == [DEFAULT_SYSTEM_PROMPT]
    template = jinja2.Environment(keep_trailing_newline=True).from_string(go_to_jinja(entries["TEMPLATE"][0]))
    rendered = template.render(System=CONVERSATION[0]["content"],
                               Messages=[{"Role": m["role"], "Content": m["content"]} for m in CONVERSATION[1:]])
    tokenizer = AutoTokenizer.from_pretrained(resolve_base("bundled"))
    assert rendered == tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
