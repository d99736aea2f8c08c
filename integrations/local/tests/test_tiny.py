"""Tiny tokenizer/model factory: offline round-trips, determinism, parameter accounting."""
from __future__ import annotations

import torch

from opdplug_local import tiny
from opdplug_local.tasks import SumChain

TEXT = "a 3 b 5 c 1 d 7 = a 3 b 8 c 9 d 6 ; 6"


def test_tokenizer_special_ids_and_bos():
    tok = tiny.build_tokenizer(SumChain.words())
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    with_bos = tok(TEXT)["input_ids"]
    without = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert with_bos == [1] + without
    assert len(without) == len(TEXT.split())
    assert tok.decode(without) == TEXT


def test_tokenizer_and_model_round_trip_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tiny.build_tokenizer(SumChain.words())
    model = tiny.build_model("tiny", tok, seed=0)
    tiny.save_pretrained_pair(model, tok, tmp_path)
    model2, tok2 = tiny.load_pretrained(tmp_path)
    ids = tok2(TEXT)["input_ids"]
    assert ids == tok(TEXT)["input_ids"]
    assert tok2.decode(ids, skip_special_tokens=True) == TEXT
    assert tok2.decode(ids + [tok2.eos_token_id, tok2.pad_token_id], skip_special_tokens=True) == TEXT
    assert (tok2.pad_token_id, tok2.bos_token_id, tok2.eos_token_id) == (0, 1, 2)
    x_1_L = torch.tensor([ids])
    torch.testing.assert_close(model2(x_1_L).logits, model(x_1_L).logits, rtol=0, atol=0)
    assert model2.config.tie_word_embeddings is False
    assert model2.dtype == torch.float32


def test_build_model_deterministic_in_seed_and_leaves_global_rng():
    tok = tiny.build_tokenizer(SumChain.words())
    before = torch.random.get_rng_state()
    a = tiny.build_model("tiny", tok, seed=1)
    assert torch.equal(before, torch.random.get_rng_state())
    b = tiny.build_model("tiny", tok, seed=1)
    c = tiny.build_model("tiny", tok, seed=2)
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert a.config.pad_token_id == 0 and a.config.eos_token_id == 2
    assert a.lm_head.weight is not a.model.embed_tokens.weight


def test_sizes_and_flops_convention():
    tok = tiny.build_tokenizer(SumChain.words())
    teacher = tiny.build_model("teacher", tok, seed=0)
    student = tiny.build_model("student", tok, seed=0)
    n_t = tiny.count_parameters(teacher)

    # "Several times smaller": compare compute, which is what distillation saves.
    assert tiny.flops_per_token(teacher, True) > 3.5 * tiny.flops_per_token(student, True)
    embed = teacher.get_input_embeddings().weight.numel()
    assert tiny.flops_per_token(teacher, training=False) == 2 * (n_t - embed)
    assert tiny.flops_per_token(teacher, training=True) == 6 * (n_t - embed)
    custom = tiny.build_model(dict(tiny.SIZES["tiny"], num_hidden_layers=1), tok, seed=0)
    assert custom.config.num_hidden_layers == 1
