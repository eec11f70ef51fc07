"""Data loading, the seed's filters, dedupe, split determinism, contamination, masking and batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medchat.core.fileio import file_sha256
from medchat.core.paths import ASSETS_DIR
from trainer import data as d
from trainer.config import load_config

SAMPLE = ASSETS_DIR / "sample_data" / "medical_qa_sample.jsonl"


def cfg_for(*sources, **overrides):
    return load_config("cpu-smollm2", overrides={"data": [str(s) for s in sources], **overrides})


def test_sample_filters_count_each_drop():
    prepared = d.prepare(cfg_for(SAMPLE))
    m = prepared.manifest
    assert m["rows_read"] == 36
    assert m["dropped"] == {"empty": 0, "question_too_short": 1, "answer_too_short": 1, "spam": 1, "duplicate": 1}
    assert m["kept_after_filters"] == 32 and m["split"] == {"train": 28, "eval": 4}
    assert m["sources"][0]["sha256"] == file_sha256(SAMPLE) and m["sources"][0]["question_column"] == "input"


def test_split_is_deterministic_and_seeded():
    a = d.prepare(cfg_for(SAMPLE, seed=7))
    b = d.prepare(cfg_for(SAMPLE, seed=7))
    c = d.prepare(cfg_for(SAMPLE, seed=8))
    assert [r.question for r in a.eval] == [r.question for r in b.eval]
    assert [r.question for r in a.train] == [r.question for r in b.train]
    assert [r.question for r in a.eval] != [r.question for r in c.eval]
    small = d.prepare(cfg_for(SAMPLE, limit=10, eval_fraction=0.2))
    assert (len(small.train), len(small.eval)) == (8, 2)


def test_contamination_check_moves_leaked_questions_to_train(tmp_path):
    rows = [{"question": f"What is condition number {i}?", "answer": f"Condition {i} is a disease."} for i in range(20)]
    # the same question with different answers: must never sit on both sides of the split
    rows += [{"question": "What is condition number 3?", "answer": f"Another valid answer {i}."} for i in range(6)]
    f = tmp_path / "qa.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = d.prepare(cfg_for(f, eval_fraction=0.3))
    assert d.contamination(prepared.train, prepared.eval) == []
    assert prepared.manifest["contamination"]["eval_questions_in_train"] == 0
    train_q = {d.normalize_question(r.question) for r in prepared.train}
    assert all(d.normalize_question(r.question) not in train_q for r in prepared.eval)
    fake_eval = [d.Row("what is condition number 3", "x", "s", 1)]
    assert d.contamination(prepared.train + fake_eval, fake_eval) == fake_eval


def test_eval_size_fixes_the_held_out_split_whatever_the_limit(tmp_path):
    rows = [{"question": f"What is condition number {i}?", "answer": f"Condition {i} is a disease."} for i in range(60)]
    rows += [{"question": f"What is condition number {i}?", "answer": f"Another answer {i}."} for i in range(60)]
    f = tmp_path / "qa.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {limit: d.prepare(cfg_for(f, eval_size=12, limit=limit)) for limit in (10, 30, None)}
    held = [[(r.question, r.answer) for r in p.eval] for p in runs.values()]
    assert len(held[0]) == 12 and held[0] == held[1] == held[2]
    assert [len(p.train) for p in runs.values()] == [10, 30, 120 - 12 - 12]  # 12 rows repeat a held-out question
    small, large = runs[10], runs[30]
    assert [r.question for r in large.train[:10]] == [r.question for r in small.train]  # subsets grow
    for p in runs.values():
        assert d.contamination(p.train, p.eval) == []
    m = runs[None].manifest
    assert (m["eval_size"], m["eval_fraction"], m["split"]) == (12, None, {"train": 96, "eval": 12})
    assert m["contamination"]["train_rows_skipped_contamination"] == 12
    assert runs[10].manifest["limit"] == 10 and runs[10].manifest["used"] == 22
    # without eval_size, a growing limit changes the held-out rows: the reason eval_size exists
    by_fraction = [d.prepare(cfg_for(f, eval_fraction=0.2, limit=n)).eval for n in (40, 80)]
    assert [r.question for r in by_fraction[0]] != [r.question for r in by_fraction[1]]
    with pytest.raises(d.DataError, match="eval_size=200"):
        d.prepare(cfg_for(f, eval_size=200))


def test_file_formats_and_column_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"q": "What is a fever exactly?", "a": "A body temperature above normal."},
            {"q": "What does insulin do?", "a": "It lowers blood sugar."}]
    (tmp_path / "x.json").write_text(json.dumps(rows))
    (tmp_path / "x.csv").write_text("q,a\n" + "".join(f'"{r["q"]}","{r["a"]}"\n' for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    loaded, infos = d.load_rows([str(tmp_path / n) for n in ("x.json", "x.csv", "x.parquet")], "q", "a")
    assert [r.question for r in loaded] == [rows[0]["q"], rows[1]["q"]] * 3
    assert [i.kind for i in infos] == ["json", "csv", "parquet"]
    assert loaded[3].where().endswith("x.csv:3")


def test_bad_input_messages(tmp_path):
    with pytest.raises(d.DataError, match="does not exist"):
        d.load_rows([str(tmp_path / "nope.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "What is a fever exactly?", "output": "Hot."}\n{"input": broken\n')
    with pytest.raises(d.DataError, match=r"bad.jsonl, line 2: not valid JSON"):
        d.load_rows([str(bad)])
    cols = tmp_path / "cols.jsonl"
    cols.write_text('{"prompt_text": "What is a fever exactly?", "reply": "Hot."}\n')
    with pytest.raises(d.DataError, match=r"missing a question column.*columns are: prompt_text, reply.*--question-column"):
        d.load_rows([str(cols)])
    with pytest.raises(d.DataError, match=r"no column 'nope'.*columns are: prompt_text, reply"):
        d.load_rows([str(cols)], "nope", "reply")
    with pytest.raises(d.DataError, match="unsupported file type '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        d.load_rows([str(tmp_path / "a.txt")])
    short = tmp_path / "short.jsonl"
    short.write_text('{"input": "Flu?", "output": "Virus."}\n{"input": "What is it, http://spam", "output": "Spam!"}\n')
    with pytest.raises(d.DataError, match=r"no examples left after filtering the 2 rows.*question_too_short: 1, spam: 1"):
        d.prepare(cfg_for(short))
    two = tmp_path / "two.jsonl"
    two.write_text('{"input": "What is a fever exactly?", "output": "Hot body."}\n')
    with pytest.raises(d.DataError, match="cannot be split"):
        d.prepare(cfg_for(two))


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(d.DataError, match="could not load the Hub dataset 'medalpaca/medical_meadow_medical_flashcards'"):
        d.load_rows(["medalpaca/medical_meadow_medical_flashcards"])


def test_answer_only_labels_exact_tokens(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    row = d.Row("What is aspirin?", "Aspirin blocks cyclooxygenase.", "s", 1)
    (enc,) = d.encode_rows(tok, [row], "chat", "Be careful.", 256)
    prompt = "<|im_start|>system\nBe careful.<|im_end|>\n<|im_start|>user\nWhat is aspirin?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(enc.input_ids[: enc.prompt_tokens]) == prompt
    assert enc.labels[: enc.prompt_tokens] == [-100] * enc.prompt_tokens
    assert enc.labels[enc.prompt_tokens:] == enc.input_ids[enc.prompt_tokens:]
    assert tok.decode(enc.labels[enc.prompt_tokens:]) == "Aspirin blocks cyclooxygenase.<|im_end|>"
    assert enc.labels[-1] == tok.eos_token_id and not enc.truncated
    (seed,) = d.encode_rows(tok, [row], "seed", "Be careful.", 256)
    assert tok.decode(seed.input_ids[: seed.prompt_tokens]).endswith("### Response:\n")
    (cut,) = d.encode_rows(tok, [row], "chat", "Be careful.", len(enc.input_ids) - 3)
    assert cut.truncated and cut.answer_tokens == enc.answer_tokens - 3
    with pytest.raises(d.DataError, match=r"s:1: .*no answer token is left"):
        d.encode_rows(tok, [row], "chat", "Be careful.", enc.prompt_tokens)


def test_collator_pads_per_batch_and_packs_without_padding():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    batch = d.Collator(pad_token_id=0)(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert int(batch["num_tokens"]) == 5
    packed = d.Collator(pad_token_id=0, packing=True, max_length=8)(feats)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9]] and "attention_mask" not in packed
    rows = d.Collator(pad_token_id=0, packing=True, max_length=4)(feats)
    assert rows["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]


def test_sampler_order_depends_only_on_seed_and_epoch():
    lengths = [((i * 37) % 23) + 1 for i in range(64)]
    s = d.SeededLengthSampler(lengths, 4, seed=1)
    first = list(s)
    assert sorted(first) == list(range(64)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    again = d.SeededLengthSampler(lengths, 4, seed=1)
    again.set_epoch(1)
    assert list(again) == list(s)
    batches = [first[i:i + 4] for i in range(0, 64, 4)]
    spread = sum(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches)
    plain = d.SeededLengthSampler(lengths, 4, seed=1, group_by_length=False)
    p = list(plain)
    spread_plain = sum(max(lengths[j] for j in p[i:i + 4]) - min(lengths[j] for j in p[i:i + 4]) for i in range(0, 64, 4))
    assert spread < spread_plain


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir):
    """Packing must give the same loss as padding: position ids restart, transformers builds the block mask."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    # transformers only turns restarting position ids into a block-diagonal mask when no KV cache is in play;
    # with the default use_cache=True the packed examples attend to each other. The trainer switches it off.
    model.config.use_cache = False
    feats = [{"input_ids": list(range(10, 22)), "labels": [-100] * 5 + list(range(15, 22))},
             {"input_ids": list(range(30, 37)), "labels": [-100] * 3 + list(range(33, 37))}]
    padded = d.Collator(pad_token_id=1)(feats)
    packed = d.Collator(pad_token_id=1, packing=True, max_length=64)(feats)
    with torch.no_grad():
        lp = model(**{k: v for k, v in padded.items() if k != "num_tokens"}).loss
        lk = model(**{k: v for k, v in packed.items() if k != "num_tokens"}).loss
        naive = dict(packed)
        naive.pop("num_tokens")
        naive["position_ids"] = torch.arange(naive["input_ids"].shape[1]).unsqueeze(0)
        lcross = model(**naive).loss
    assert torch.allclose(lp, lk, atol=1e-5)
    assert not torch.allclose(lp, lcross, atol=1e-5)  # sanity: attending across examples changes the loss


def _collated(lengths, packing=False):
    features = [{"input_ids": list(range(1, n + 1)), "labels": [-100] * (n // 2) + list(range(n // 2 + 1, n + 1))}
                for n in lengths]
    return d.Collator(pad_token_id=0, packing=packing, max_length=16)(features)


def test_split_batch_keeps_every_row_within_the_token_budget():
    batch = _collated([9, 3, 8, 2, 4])  # 5 rows x 9 columns = 45 tokens
    assert d.split_batch(batch, 0) == [batch] and d.split_batch(batch, 45) == [batch]
    pieces = d.split_batch(batch, 20)
    assert all(p["input_ids"].numel() <= 20 for p in pieces)
    # longest first, each piece trimmed to its own longest row: [9, 8] then [4, 3, 2]
    assert [tuple(p["input_ids"].shape) for p in pieces] == [(2, 9), (3, 4)]
    rows = sorted(tuple(r[m.bool()].tolist()) for p in pieces for r, m in zip(p["input_ids"], p["attention_mask"]))
    assert rows == sorted(tuple(range(1, n + 1)) for n in [9, 3, 8, 2, 4])
    supervised = sum(int((p["labels"] != -100).sum()) for p in pieces)
    assert supervised == int((batch["labels"] != -100).sum())
    assert [int(p["num_tokens"]) for p in pieces] == [26, 0]  # counted once
    # a row longer than the budget is never cut
    assert [tuple(p["input_ids"].shape) for p in d.split_batch(batch, 5)] == [(1, 9), (1, 8), (1, 4), (1, 3), (1, 2)]


def test_passes_trade_padding_against_the_cost_of_a_pass():
    lengths = [9, 3, 8, 2, 4]
    assert d.plan_passes(lengths, 100, overhead=100) == [[0, 2, 4, 1, 3]]  # passes dear: one, padding and all
    assert d.plan_passes(lengths, 100, overhead=0) == [[0], [2], [4], [1], [3]]  # padding dear: no padding at all
    assert d.plan_passes(lengths, 100, overhead=3) == [[0, 2], [4, 1, 3]]  # 18 + 12 + 2 x 3 beats 45 + 3
    assert d.plan_passes([5, 5, 5, 5], 10, overhead=1) == [[0, 1], [2, 3]]  # the budget always holds


def test_split_batch_of_packed_rows_keeps_their_position_ids():
    batch = _collated([9, 7, 6, 5, 3], packing=True)  # packed into rows of at most 16 tokens
    pieces = d.split_batch(batch, batch["input_ids"].shape[1])
    assert len(pieces) == batch["input_ids"].shape[0] > 1
    assert all("attention_mask" not in p and p["position_ids"].shape == p["input_ids"].shape for p in pieces)
    joined = sorted(p["position_ids"][0].tolist() for p in pieces)
    assert joined == sorted(batch["position_ids"].tolist())
