"""The real embedder (all-MiniLM-L6-v2) and the `medchat guard` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medchat.app.guard_cli import guard_command


@pytest.fixture(scope="module")
def embedder():
    from medchat.core.guard.embedder import Embedder, EmbedderError

    try:
        return Embedder().load()
    except EmbedderError as exc:  # pragma: no cover - the package is a dependency
        pytest.skip(str(exc))


def test_vectors_are_unit_and_ordered(embedder):
    texts = ["What are the symptoms of diabetes?", "who won the world cup", "How is type 2 diabetes treated?"]
    v = embedder.encode(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(texts[1])[0], v[1], atol=1e-5)  # batching keeps the order
    assert v[0] @ v[2] > v[0] @ v[1]


def test_the_numpy_bert_gives_transformers_outputs(embedder):
    """The reference: transformers' BertModel on the same files, mean-pooled over each layer."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from medchat.core.guard.embedder import MAX_SEQ_LENGTH, embedder_model_dir

    texts = ["What are the symptoms of diabetes?", "", "crushing chest pain, left arm numb",
             "a long paste " * 200]  # beyond MAX_SEQ_LENGTH tokens: truncated the same way
    tokenizer = AutoTokenizer.from_pretrained(embedder_model_dir())
    model = AutoModel.from_pretrained(embedder_model_dir()).eval()
    batch = tokenizer([t or " " for t in texts], padding=True, truncation=True, max_length=MAX_SEQ_LENGTH,
                      return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch, output_hidden_states=True).hidden_states[1:]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.cat([torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=1) for h in hidden], 1)
    np.testing.assert_allclose(embedder.encode_layers(texts), reference.numpy(), atol=1e-5)


def test_the_guard_needs_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys; from medchat.core.guard import Guard; g = Guard.load(None).warm_up(); "
            "r = g.check('my baby is 3 weeks old and has a fever of 38.5'); "
            "assert r.ood_level == 'in_domain' and r.red_flags, r; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_layer_means_end_with_the_sentence_embedding(embedder):
    texts = ["crushing chest pain and my left arm is numb", "", "how is asthma treated"]
    layers = embedder.encode_layers(texts)
    assert layers.shape == (3, 6 * 384) and embedder.n_layers == 6
    np.testing.assert_allclose(np.linalg.norm(layers.reshape(3, 6, 384), axis=2), 1.0, atol=1e-5)  # each unit
    np.testing.assert_allclose(layers[:, -384:], embedder.encode(texts), atol=1e-5)  # so the index is unchanged
    assert embedder.encode_layers([]).shape == (0, 6 * 384)


def test_the_shipped_index_puts_issue_13s_look_alikes_out_of_domain(embedder):
    from medchat.core.guard import Guard

    guard = Guard.load(None, embedder=embedder)  # the index medchat, medchat ask and medchat guard load
    texts = ["How do I fix a flat bicycle tire?", "My car engine is overheating, what should I do?",
             "What does a p-value mean?", "Write a Python function that reverses a linked list",
             "What are the symptoms of type 2 diabetes?"]
    levels = [r.ood_level for r in guard.check_many(texts)]
    assert levels == ["out_of_domain"] * 4 + ["in_domain"]


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_cli_rules_only_stdin():
    res = CliRunner().invoke(guard_command, ["--rules-only"],
                             input="my son is having a seizure\n\nhow much tylenol can I give my 2 year old\n")
    assert res.exit_code == 0, res.output
    rows = _lines(res.stdout)
    assert len(rows) == 2  # blank lines are skipped
    assert rows[0]["red_flags"][0]["rule_id"] == "seizure" and rows[0]["ood_level"] is None
    assert rows[1]["dosing_note"] is True and rows[1]["red_flags"] == []


def test_cli_text_with_the_shipped_index(embedder):
    res = CliRunner().invoke(guard_command, ["What causes asthma?"])
    assert res.exit_code == 0, res.output
    (row,) = _lines(res.stdout)
    assert row["text"] == "What causes asthma?"
    assert isinstance(row["ood_score"], float) and row["ood_level"] == "in_domain"


@pytest.mark.parametrize("text", ["", "   ", "\x1b[2J"])
def test_cli_empty_text_is_an_error_not_a_score(text):
    res = CliRunner().invoke(guard_command, [text])
    assert res.exit_code == 2
    assert "TEXT is empty" in res.stderr and res.stdout == ""


def test_cli_bad_index_is_a_message_not_a_traceback(tmp_path):
    res = CliRunner().invoke(guard_command, ["--index", str(tmp_path / "missing"), "hello"])
    assert res.exit_code == 1
    assert str(tmp_path / "missing" / "index.json") in res.output and "guard_build" in res.output
    assert "Traceback" not in res.output


def test_the_shipped_red_flag_fit_is_what_fitting_the_examples_gives(embedder, tmp_path):
    from medchat.core.guard.rules import default_rules
    from medchat.core.guard.semantic import SHIPPED_FIT, Fit, SemanticConfig, SemanticRedFlags

    config = SemanticConfig.from_rules(default_rules())
    fresh = SemanticRedFlags(config, embedder, tmp_path, shipped=None)  # fits from scratch, keeps it in tmp_path
    shipped = SemanticRedFlags(config, embedder, None, shipped=SHIPPED_FIT)
    texts = ["my husband collapsed and isn't breathing", "what are the warning signs of a stroke",
             "this deadline is killing me", "my 3 week old has a fever of 38.5"]
    vecs = embedder.encode_layers(texts)
    for a, b in zip(fresh.read(vecs), shipped.read(vecs)):
        assert a.nearest_rule == b.nearest_rule and a.probability == pytest.approx(b.probability, abs=0.02)
    assert Fit.load(tmp_path / SHIPPED_FIT.name, fresh.fit.fingerprint) is not None
