"""EAGLE-3 heads for targets of each supported family (Llama, Qwen2, Qwen3), built locally with a
real byte-level BPE tokenizer and chat template (``eagle3.toy.arch_target``, through
``opdplug.testing.models``): feature capture, the TTT forward, export, its audit and loading the
export back. That SGLang's own class loads these exports, and that an SGLang server captures the
same features, is checked in the ``sglang`` lane (``test_eagle3_sglang_loader.py``,
``test_eagle3_sglang_features.py``)."""
import json

import pytest
import torch
import transformers

from opdplug.errors import ConfigError
from opdplug_drafters.eagle3 import Eagle3Drafter, save_head
from opdplug_drafters.eagle3.capture import capture
from opdplug_drafters.eagle3.config import draft_config
from opdplug_drafters.eagle3.toy import ARCH_SHAPES, arch_target, toy_head
from opdplug_drafters.export import export_drafter

ARCHS = ["llama", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=ARCHS)
def target(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"arch-{request.param}")
    model, tok = arch_target(request.param, root / "target")
    return request.param, root, model, tok


def _chat_rows(tok):
    rows = [tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) + tok.encode(" The answer is 8.", add_special_tokens=False)
            for text in ("Tom has 3 apples and buys 5 more.", "def add(a, b): return a + b")]
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), 1
    return ids, mask


def test_the_target_is_what_its_family_ships(target):
    arch, _, model, tok = target
    assert model.config.model_type == arch
    assert tok.chat_template and tok.decode(tok.encode("a  b\n c", add_special_tokens=False)) == "a  b\n c"  # byte-level: spaces survive
    if arch == "qwen3":
        assert model.config.head_dim * model.config.num_attention_heads != model.config.hidden_size


def test_capture_reads_the_stream_entering_each_aux_layer(target):
    """The features are the residual stream entering decoder layer i (SGLang's capture point), for
    every family: checked with hooks on the layers, not through ``output_hidden_states``."""
    arch, _, model, tok = target
    head = toy_head(model, draft_vocab_size=64, always=(tok.eos_token_id,))
    ids, mask = _chat_rows(tok)
    entering = {}
    hooks = [model.model.layers[i].register_forward_pre_hook(
        lambda mod, args, kwargs, i=i: entering.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True) for i in head.aux_layers]
    try:
        batch, _ = capture(model, ids, mask, mask, head.aux_layers, head.draft_to_target_Vd)
    finally:
        for h in hooks:
            h.remove()
    want = torch.cat([entering[i] for i in head.aux_layers], dim=-1)
    real = mask.bool()
    torch.testing.assert_close(batch.features_B_L_A[real], want[real])
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(batch.target_logits_B_L_Vd[real], logits[..., head.draft_to_target_Vd][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["eagle3", "eagle3.1"])
def test_head_export_audit_and_load_back(target, tmp_path, variant):
    arch, root, model, tok = target
    head = toy_head(model, draft_vocab_size=64, always=(tok.eos_token_id,), variant=variant)
    data = json.loads(head.config.to_json_string())
    shape = ARCH_SHAPES[arch]
    assert data["model_type"] == "llama" and data["architectures"] == ["LlamaForCausalLMEagle3"]
    assert data["head_dim"] == shape.get("head_dim", shape["hidden_size"] // shape["num_attention_heads"])
    assert data["rope_parameters"]["rope_theta"] == shape.get("rope_theta", model.config.rope_parameters["rope_theta"])
    assert data["attention_bias"] is False  # whatever the target's (Qwen2 has q/k/v bias)
    ids, mask = _chat_rows(tok)
    batch, _ = capture(model, ids, mask, mask, head.aux_layers, head.draft_to_target_Vd)
    with torch.no_grad():
        logits = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, 3)
    assert len(logits) == 3 and all(bool(torch.isfinite(x).all()) for x in logits)
    save_head(head, tmp_path / "run" / "head")
    out = export_drafter("eagle3", tmp_path / "run", tmp_path / "export", target_dir=root / "target")
    row = ids[0, :int(mask[0].sum())].tolist()
    feats = batch.features_B_L_A[0, :len(row) - 1]
    a = Eagle3Drafter(head).propose([row], [feats], 4, temperature=0.0, generator=None)
    b = Eagle3Drafter.from_pretrained(out, model).propose([row], [feats], 4, temperature=0.0, generator=None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_an_unsupported_family_is_one_line():
    config = transformers.GPT2Config(n_embd=64, n_layer=4, n_head=4, vocab_size=100)
    with pytest.raises(ConfigError, match="llama, qwen2, qwen3 targets; this target is 'gpt2'") as info:
        draft_config(config, draft_vocab_size=50, aux_layers=(1, 2, 3))
    assert "\n" not in str(info.value)
