"""The answer-only loss: the same value and gradients as the model's own causal-LM loss."""

from __future__ import annotations

import pytest
import torch

from trainer import data as data_mod
from trainer.train import answer_only_loss


@pytest.fixture
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from medchat.core.model import ModelSpec, load

    loaded = load(ModelSpec(base=str(tiny_model_dir), dtype="fp32"))
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                    init_lora_weights=False))
    return model


def _batch(packing: bool):
    features = [  # prompt tokens are masked (-100), answers supervised; different lengths
        {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [-100, -100, -100, 8, 9, 10, 11]},
        {"input_ids": [12, 13, 14, 15], "labels": [-100, -100, 14, 15]},
        {"input_ids": [16, 17, 18, 19, 20, 21, 22, 23, 24], "labels": [-100] * 6 + [22, 23, 24]},
    ]
    return data_mod.Collator(pad_token_id=0, packing=packing, max_length=64)(features)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("num_items", [None, 23])
def test_matches_the_models_own_loss_and_gradients(lora_model, packing, num_items):
    batch = _batch(packing)
    batch.pop("num_tokens", None)
    kwargs = {"num_items_in_batch": num_items} if num_items is not None else {}
    reference = lora_model(**batch, **kwargs).loss
    reference.backward()
    expected = _grads(lora_model)
    lora_model.zero_grad()

    ours = answer_only_loss(lora_model, batch, num_items)
    ours.backward()
    assert torch.allclose(ours, reference, atol=1e-5), (ours, reference)
    got = _grads(lora_model)
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5, rtol=1e-4), name
