"""Shared fixtures: tiny random models built on the spot, and isolated user directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What are the symptoms of diabetes? Common symptoms include thirst, frequent urination and fatigue.",
    "How does aspirin work? Aspirin blocks cyclooxygenase and lowers prostaglandin production.",
    "You are a careful medical assistant. Always suggest seeing a physician.",
    "The immune system fights bacteria with white blood cells and antibodies.",
    "### System: ### Instruction: ### Response:",
]


@pytest.fixture(scope="session", autouse=True)
def _shared_cache_dir(tmp_path_factory):
    """One cache for the whole session (the bundled model is converted once), unless the caller set one."""
    if "MEDCHAT_CACHE_DIR" not in os.environ:
        os.environ["MEDCHAT_CACHE_DIR"] = str(Path.home() / ".cache" / "medchat-tests")
    from medchat.core import paths

    # Now, not only in isolated_user_dirs: a module-scoped fixture (an engine loaded once) runs before the
    # first test's function-scoped fixtures, and would otherwise convert into the user's own cache.
    paths.configure(cache=os.environ["MEDCHAT_CACHE_DIR"])
    yield


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path, monkeypatch):
    """Each test gets its own data, config and runs directories."""
    monkeypatch.setenv("MEDCHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDCHAT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MEDCHAT_RUNS_DIR", str(tmp_path / "runs"))
    from medchat.app import environment

    # What every command does first: the directories above (and no earlier test's --runs-dir) for the core
    # functions a test calls directly; subprocesses read the same variables themselves.
    environment.start()
    return tmp_path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE tokenizer with a ChatML template; any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A random 2-layer Llama (about 60k parameters) with the tiny tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bundled_spec():
    """The real bundled SmolLM2-135M-Instruct (converted once into the session cache)."""
    from medchat.core.model import ModelSpec

    return ModelSpec(base="bundled")


@pytest.fixture(scope="session")
def tiny_nf4_model_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A random 2-layer Llama whose linear layers fit bitsandbytes' AVX512-BF16 CPU kernel (out % 32,
    in % 64): the fast 4-bit path on CPU, not only the generic one."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny_nf4_model")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
