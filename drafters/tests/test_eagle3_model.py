"""EAGLE-3 head: layout, capture-layer convention, and training == drafting maths."""
import json

import pytest
import torch

from opdplug.errors import ConfigError
from opdplug_drafters.eagle3 import tensor_specs
from opdplug_drafters.eagle3.config import check_aux_layers, default_aux_layers, draft_config, sglang_layer_ids
from opdplug_drafters.eagle3.toy import toy_head, toy_target
from opdplug_drafters.eagle3.train import Eagle3Options
from opdplug_drafters.eagle3.ttt import generate, target_batch

from eagle3_reference import chain_step, feature_entries


@pytest.fixture(scope="module")
def target():
    return toy_target(num_layers=4)


def test_state_dict_is_exactly_the_exported_layout(target):
    model, _ = target
    head = toy_head(model, draft_vocab_size=20)
    specs = tensor_specs(head.config)
    state = head.state_dict()
    assert set(state) == set(specs)
    for name, (shape, kind) in specs.items():
        assert tuple(state[name].shape) == shape, name
        assert state[name].dtype == {"int64": torch.int64, "bool": torch.bool}.get(kind, torch.float32)
    H = model.config.hidden_size
    assert specs["fc.weight"][0] == (H, 3 * H)
    assert specs["midlayer.self_attn.q_proj.weight"][0][1] == 2 * H
    assert specs["lm_head.weight"][0] == (20, H)
    assert not head.embed_tokens.weight.requires_grad  # the target's table, frozen


def test_config_has_what_sglang_reads(target):
    model, _ = target
    cfg = draft_config(model.config, draft_vocab_size=20, aux_layers=(1, 2, 3))
    data = json.loads(cfg.to_json_string())
    assert data["architectures"] == ["LlamaForCausalLMEagle3"]
    assert data["num_hidden_layers"] == 1 and data["draft_vocab_size"] == 20
    assert data["vocab_size"] == model.config.vocab_size and data["hidden_size"] == model.config.hidden_size
    # SGLang captures the stream entering layer id + 1: HF hidden_states[1, 2, 3] -> ids [0, 1, 2].
    assert data["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    assert data["tie_word_embeddings"] is False


def test_aux_layer_convention():
    # SGLang's own default (entering 2, L//2, L-3) where it is valid; the safe fallback on shallow targets.
    assert default_aux_layers(32) == (2, 16, 29) and sglang_layer_ids((2, 16, 29)) == [1, 15, 28]
    assert default_aux_layers(4) == (1, 2, 3)  # SGLang's default would collide: [2, 2, 1]
    assert default_aux_layers(6) == (1, 3, 5)
    assert default_aux_layers(2) == (0, 1)
    for bad in [(1, 1, 2), (3, 2, 1), (1, 2, 4), (-1, 1, 2), ()]:
        with pytest.raises(ConfigError):
            check_aux_layers(bad, 4)


def test_ttt_unroll_equals_drafting_with_forced_tokens(target):
    """The training forward at step j, index t is exactly what drafting computes at chain step j
    rooted at t when the chain is fed the data tokens (same positions, same visible entries)."""
    model, tok = target
    head = toy_head(model, draft_vocab_size=24)
    from opdplug_local.tasks import SumChain

    prompts = SumChain(tok).prompts(3, seed=1)
    batch = target_batch(model, generate(model, prompts, Eagle3Options(max_new_tokens=10), eos_id=2, pad_id=0, seed=0),
                         head.aux_layers, head.draft_to_target_Vd)
    steps = 4
    with torch.no_grad():
        ttt = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, steps)
    row = 1
    n = int(batch.attention_mask_B_L[row].sum())
    ids = batch.input_ids_B_L[row, :n].tolist()
    feats = batch.features_B_L_A[row, :n]
    for t in (0, 3, n - 2 - steps):
        k0, v0, out_1_N_H = feature_entries(head, ids[:t + 2], feats[:t + 1])
        out = out_1_N_H[:, -1:]
        torch.testing.assert_close(head.logits(out)[0, 0], ttt[0][row, t], atol=1e-5, rtol=1e-5)
        keys, values = [k0], [v0]
        for j in range(1, steps):
            out = chain_step(head, ids[t + 1 + j], out, t + j, keys, values)
            with torch.no_grad():
                torch.testing.assert_close(head.logits(out)[0, 0], ttt[j][row, t], atol=1e-5, rtol=1e-5)


def test_ttt_padding_rows_do_not_leak(target):
    """A row's TTT logits do not depend on its batch-mates or on right padding."""
    model, tok = target
    head = toy_head(model)
    from opdplug_local.tasks import SumChain

    prompts = SumChain(tok).prompts(4, seed=2)
    batch = target_batch(model, generate(model, prompts, Eagle3Options(max_new_tokens=12), eos_id=2, pad_id=0, seed=1),
                         head.aux_layers, head.draft_to_target_Vd)
    with torch.no_grad():
        full = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, 3)
        n = int(batch.attention_mask_B_L[2].sum())
        alone = head.ttt_forward(batch.input_ids_B_L[2:3, :n], batch.features_B_L_A[2:3, :n],
                                 batch.attention_mask_B_L[2:3, :n], 3)
    for j in range(3):
        # Index t at step j reads token t + 1 + j: compare where that is inside the row.
        valid = n - 1 - j
        torch.testing.assert_close(full[j][2, :valid], alone[j][0, :valid], atol=1e-5, rtol=1e-5)


def test_target_batch_matches_the_plain_forward(target):
    """Features are HF hidden_states[i] for i in aux_layers; the reduced logits are the full
    logits' draft columns (the chunked lm-head changes nothing)."""
    model, tok = target
    head = toy_head(model, draft_vocab_size=20)
    from opdplug_local.tasks import SumChain

    sample = generate(model, SumChain(tok).prompts(3, seed=4), Eagle3Options(max_new_tokens=9), eos_id=2, pad_id=0, seed=3)
    batch = target_batch(model, sample, head.aux_layers, head.draft_to_target_Vd, chunk_rows=7)
    with torch.no_grad():
        out = model(input_ids=sample.input_ids_B_L, attention_mask=sample.attention_mask_B_L, output_hidden_states=True)
    real = sample.attention_mask_B_L.bool()  # padding positions are never read
    features = torch.cat([out.hidden_states[i] for i in (1, 2, 3)], dim=-1)
    torch.testing.assert_close(batch.features_B_L_A[real], features[real])
    torch.testing.assert_close(batch.target_logits_B_L_Vd[real], out.logits[..., head.draft_to_target_Vd][real])
    assert torch.equal(batch.target_argmax_B_L[real], out.logits.argmax(-1)[real])
    mass = out.logits.softmax(-1)[..., head.draft_to_target_Vd].sum(-1)
    torch.testing.assert_close(batch.target_draft_mass_B_L[real], mass[real])
