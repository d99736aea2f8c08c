"""EAGLE-3.1 and the other head variants: layout, training == drafting maths, export and audit.

The variants are the config flags SGLang 0.5.23's ``LlamaForCausalLMEagle3`` reads (``fc_norm``,
``norm_before_fc``, ``norm_output``); ``"eagle3.1"`` is ``fc_norm`` + ``norm_output``, as the
public EAGLE-3.1 checkpoints set them. That SGLang's own class loads and computes these heads the
same way is checked in the ``sglang`` lane (``test_eagle3_sglang_loader.py``).
"""
import json

import pytest
import torch

from opdplug.errors import ConfigError
from opdplug_drafters.eagle3 import Eagle3Drafter, save_head, tensor_specs
from opdplug_drafters.eagle3.config import VARIANTS, HeadNorms, draft_config, head_norms, norms_of
from opdplug_drafters.eagle3.toy import toy_head, toy_target
from opdplug_drafters.eagle3.train import Eagle3Options
from opdplug_drafters.eagle3.ttt import generate, target_batch
from opdplug_drafters.export import export_drafter

from eagle3_reference import chain_step, feature_entries, reference_propose

VARIANT_CASES = {
    "eagle3.1": "eagle3.1",
    "norm_before_fc": HeadNorms(norm_before_fc=True),
    "all three": HeadNorms(fc_norm=True, norm_before_fc=True, norm_output=True),
}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    model, tok = toy_target(num_layers=4, directory=root / "target")
    return root, model, tok


def _head(model, variant, **kw):
    """A head whose every norm weight is away from 1, so a norm applied twice, or not at all, shows."""
    head = toy_head(model, variant=variant, **kw)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("norm.weight") or ".fc_norm." in f".{name}" or name.startswith("input_norm"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return head


def test_variant_names():
    assert head_norms("eagle3") == HeadNorms()
    assert head_norms("eagle3.1") == HeadNorms(fc_norm=True, norm_output=True) == VARIANTS["eagle3.1"]
    assert head_norms("eagle3", norm_before_fc=True) == HeadNorms(norm_before_fc=True)
    with pytest.raises(ConfigError, match="unknown EAGLE-3 variant") as info:
        head_norms("eagle4")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", sorted(VARIANT_CASES))
def test_layout_and_config_flags(target, case):
    _, model, _ = target
    variant = VARIANT_CASES[case]
    head = toy_head(model, variant=variant, draft_vocab_size=20)
    norms = head_norms(variant)
    specs = tensor_specs(head.config)
    state = head.state_dict()
    assert set(state) == set(specs)  # exactly the exported names, the variant's norms included
    for name, (shape, _) in specs.items():
        assert tuple(state[name].shape) == shape, name
    H = model.config.hidden_size
    assert ("fc_norm.0.weight" in specs) == norms.fc_norm
    if norms.fc_norm:
        assert [specs[f"fc_norm.{i}.weight"][0] for i in range(3)] == [(H,)] * 3 and "fc_norm.3.weight" not in specs
    assert specs.get("input_norm.weight", (None,))[0] == ((3 * H,) if norms.norm_before_fc else None)
    data = json.loads(head.config.to_json_string())
    assert {k: data.get(k, False) for k in ("fc_norm", "norm_before_fc", "norm_output")} == {
        "fc_norm": norms.fc_norm, "norm_before_fc": norms.norm_before_fc, "norm_output": norms.norm_output}
    assert norms_of(data) == norms_of(head.config) == norms


def test_plain_eagle3_config_is_unchanged(target):
    """No variant key is written for the original head: its config.json reads as before."""
    _, model, _ = target
    data = json.loads(draft_config(model.config, draft_vocab_size=20, aux_layers=(1, 2, 3)).to_json_string())
    assert not {"fc_norm", "norm_before_fc", "norm_output", "use_aux_norm"} & set(data)


def test_norms_are_applied_where_sglang_applies_them(target):
    """fuse: the concatenation's norm first, then one norm per feature, then fc; carry: the final
    norm with norm_output, the raw output without."""
    _, model, _ = target
    head = _head(model, VARIANT_CASES["all three"])
    f = torch.randn(2, 5, 3 * model.config.hidden_size)
    x = head.input_norm(f)
    x = torch.cat([n(c) for n, c in zip(head.fc_norm, x.chunk(3, dim=-1))], dim=-1)
    torch.testing.assert_close(head.fuse(f), head.fc(x))
    out = torch.randn(2, 5, model.config.hidden_size)
    torch.testing.assert_close(head.carry(out), head.norm(out))
    plain = _head(model, "eagle3")
    assert torch.equal(plain.carry(out), out)
    torch.testing.assert_close(plain.fuse(f), plain.fc(f))


@pytest.mark.parametrize("case", sorted(VARIANT_CASES))
def test_ttt_unroll_equals_drafting_with_forced_tokens(target, case):
    """Training-time test feeds step j the carried state of step j - 1, as drafting does."""
    _, model, tok = target
    head = _head(model, VARIANT_CASES[case], draft_vocab_size=24)
    from opdplug_local.tasks import SumChain

    prompts = SumChain(tok).prompts(3, seed=1)
    batch = target_batch(model, generate(model, prompts, Eagle3Options(max_new_tokens=10), eos_id=2, pad_id=0, seed=0),
                         head.aux_layers, head.draft_to_target_Vd)
    steps = 4
    with torch.no_grad():
        ttt = head.ttt_forward(batch.input_ids_B_L, batch.features_B_L_A, batch.attention_mask_B_L, steps)
    row = 1
    n = int(batch.attention_mask_B_L[row].sum())
    ids, feats = batch.input_ids_B_L[row, :n].tolist(), batch.features_B_L_A[row, :n]
    for t in (0, 3, n - 2 - steps):
        k0, v0, out_1_N_H = feature_entries(head, ids[:t + 2], feats[:t + 1])
        out = out_1_N_H[:, -1:]
        with torch.no_grad():
            torch.testing.assert_close(head.logits(out)[0, 0], ttt[0][row, t], atol=1e-5, rtol=1e-5)
        keys, values = [k0], [v0]
        for j in range(1, steps):
            out = chain_step(head, ids[t + 1 + j], head.carry(out), t + j, keys, values)
            with torch.no_grad():
                torch.testing.assert_close(head.logits(out)[0, 0], ttt[j][row, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(VARIANT_CASES))
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_lean_drafting_equals_module_by_module(target, case, temperature):
    _, model, _ = target
    head = _head(model, VARIANT_CASES[case], draft_vocab_size=20)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 32, (n,), generator=g).tolist() for n in (7, 12)]
    drafter = Eagle3Drafter(head)
    d2t = head.draft_to_target_Vd
    for b, row in enumerate(rows):
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
        feats = torch.cat([hs[i][0, :-1] for i in head.aux_layers], dim=-1)
        ids, probs = drafter.propose([row], [feats], 5, temperature=temperature, generator=torch.Generator().manual_seed(b))
        ref_ids, ref_probs = reference_propose(head, row, feats, 5, temperature, torch.Generator().manual_seed(b))
        assert torch.equal(ids[0], ref_ids)
        if temperature:
            torch.testing.assert_close(probs[0][:, d2t], ref_probs, atol=1e-6, rtol=1e-5)


def test_variants_draft_differently(target):
    """The same weights drafted as EAGLE-3 and as EAGLE-3.1 (post-norm feedback) differ from
    the second draft on: norm_output changes what the chain feeds back."""
    _, model, _ = target
    a = _head(model, "eagle3", draft_vocab_size=20)
    b = _head(model, HeadNorms(norm_output=True), draft_vocab_size=20)
    b.load_state_dict(a.state_dict())
    row = list(range(3, 12))
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
    feats = torch.cat([hs[i][0, :-1] for i in a.aux_layers], dim=-1)
    pa = Eagle3Drafter(a).propose([row], [feats], 3, temperature=1.0, generator=torch.Generator().manual_seed(0))[1]
    pb = Eagle3Drafter(b).propose([row], [feats], 3, temperature=1.0, generator=torch.Generator().manual_seed(0))[1]
    torch.testing.assert_close(pa[0, 0], pb[0, 0])  # the first draft reads the features only
    assert (pa[0, 1] - pb[0, 1]).abs().max() > 1e-4


@pytest.mark.parametrize("case", sorted(VARIANT_CASES))
def test_export_round_trip(target, tmp_path, case):
    root, model, _ = target
    head = _head(model, VARIANT_CASES[case], draft_vocab_size=20)
    save_head(head, tmp_path / "run" / "head")
    out = export_drafter("eagle3", tmp_path / "run", tmp_path / "export", target_dir=root / "target")
    data = json.loads((out / "config.json").read_text())
    assert norms_of(data) == head.norms
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    for name in tensor_specs(head.config):
        assert torch.equal(tensors[name], head.state_dict()[name]), name
    row = list(range(3, 12))
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
    feats = torch.cat([hs[i][0, :-1] for i in head.aux_layers], dim=-1)
    a = Eagle3Drafter(head).propose([row], [feats], 3, temperature=0.5, generator=torch.Generator().manual_seed(0))
    b = Eagle3Drafter.from_pretrained(out, model).propose([row], [feats], 3, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _edit(src, dst, *, config=None, tensors=None):
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    data = json.loads((src / "config.json").read_text())
    ts = load_file(str(src / "model.safetensors"))
    if config:
        config(data)
    if tensors:
        tensors(ts)
    (dst / "config.json").write_text(json.dumps(data))
    save_file(ts, str(dst / "model.safetensors"))
    return dst


AUDIT_CASES = {
    # A config that asks for norms whose weights are not in the file: SGLang would keep them at 1.
    "fc_norm flag on a plain head": ("eagle3", dict(config=lambda c: c.__setitem__("fc_norm", True)), "fc_norm.0.weight"),
    "norm_before_fc in eagle_config": ("eagle3", dict(config=lambda c: c["eagle_config"].__setitem__("norm_before_fc", True)), "input_norm.weight"),
    "legacy use_aux_norm": ("eagle3", dict(config=lambda c: c.__setitem__("use_aux_norm", True)), "fc_norm.0.weight"),
    # Weights of norms the config does not switch on: SGLang would skip them silently.
    "fc_norm weights without the flag": ("eagle3.1", dict(config=lambda c: c.pop("fc_norm")), "unexpected tensor 'fc_norm"),
    "a fourth fc_norm": ("eagle3.1", dict(tensors=lambda ts: ts.__setitem__("fc_norm.3.weight", ts["fc_norm.0.weight"].clone())), "unexpected"),
    "fc_norm of the wrong width": ("eagle3.1", dict(tensors=lambda ts: ts.__setitem__("fc_norm.1.weight", torch.ones(7))), "shape"),
}


@pytest.mark.parametrize("case", sorted(AUDIT_CASES))
def test_audit_of_variant_norms(target, tmp_path, case):
    root, model, _ = target
    variant, changes, words = AUDIT_CASES[case]
    save_head(_head(model, variant, draft_vocab_size=20), tmp_path / "run" / "head")
    src = _edit(tmp_path / "run" / "head", tmp_path / "bad", **changes)
    with pytest.raises(ConfigError, match=words) as info:
        export_drafter("eagle3", src, tmp_path / "export", target_dir=root / "target")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "export").exists()


def test_the_variant_is_a_kind_option_trained_through_the_core_loop(target, tmp_path):
    """``[drafter.eagle3] variant = "eagle3.1"``: the core loop trains the variant's norms, and the
    run's head and its export carry them."""
    from safetensors.torch import load_file

    from opdplug.prepare import validate
    from opdplug.manager import make_plugin_manager
    from opdplug_drafters.eagle3 import eagle3_config, train_eagle3

    root, model, _ = target
    manager = make_plugin_manager()
    with pytest.raises(ConfigError, match="unknown EAGLE-3 variant 'eagle4'") as info:
        validate(eagle3_config(root / "target", tmp_path / "bad", options={"variant": "eagle4"}, manager=manager), manager)
    assert "\n" not in str(info.value)
    config = eagle3_config(
        root / "target", tmp_path / "run", manager=manager,
        run={"steps": 3, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "progress": False},
        options={"variant": "eagle3.1", "norm_before_fc": True, "ttt_steps": 3, "draft_vocab_size": 20,
                 "max_new_tokens": 8, "vocab_prompts": 16, "eval_prompts": 0, "eval_every": 0},
        task={"name": "sumchain", "options": {"max_len": 4}},
    )
    train_eagle3(config, manager)
    head = Eagle3Drafter.from_pretrained(tmp_path / "run", model).head
    assert head.norms == HeadNorms(fc_norm=True, norm_before_fc=True, norm_output=True)
    final = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    for name in ("fc_norm.0.weight", "fc_norm.2.weight", "input_norm.weight"):
        assert not torch.equal(final[name], torch.ones_like(final[name])), name  # trained away from 1
    out = export_drafter("eagle3", tmp_path / "run", tmp_path / "export", target_dir=root / "target")
    data = json.loads((out / "config.json").read_text())
    assert data["fc_norm"] is True and data["norm_output"] is True and data["norm_before_fc"] is True
