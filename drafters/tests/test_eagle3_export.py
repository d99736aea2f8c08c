"""export_drafter: the audit refuses anything SGLang would not load completely, and writes nothing then."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from opdplug.errors import ConfigError
from opdplug_drafters.eagle3 import Eagle3Drafter, save_head, tensor_specs
from opdplug_drafters.eagle3.checkpoint import config_from_dict, read_head_files
from opdplug_drafters.eagle3.toy import toy_head, toy_target
from opdplug_drafters.export import export_drafter


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A saved 4-layer toy target and a head for it (as train_eagle3 writes it)."""
    root = tmp_path_factory.mktemp("eagle3_export")
    model, tok = toy_target(num_layers=4, directory=root / "target")
    head = toy_head(model, draft_vocab_size=20)
    save_head(head, root / "run" / "head")
    return root, model, tok, head


def _corrupt(src: Path, dst: Path, *, tensors=None, config=None) -> Path:
    """A copy of the head in ``src`` with ``tensors(dict)`` / ``config(dict)`` applied."""
    data, ts = read_head_files(src)
    if tensors:
        tensors(ts)
    if config:
        config(data)
    dst.mkdir(parents=True)
    save_file(ts, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(data))
    return dst


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())


def test_export_writes_what_sglang_loads(trained, tmp_path):
    root, model, tok, head = trained
    out = export_drafter("eagle3", root / "run", tmp_path / "export", target_dir=root / "target")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["num_hidden_layers"] == 1
    assert config["draft_vocab_size"] == 20 and config["vocab_size"] == model.config.vocab_size
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    tensors = load_file(str(out / "model.safetensors"))
    assert set(tensors) == set(tensor_specs(config_from_dict(config)))
    assert torch.equal(tensors["embed_tokens.weight"], model.model.embed_tokens.weight)
    assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
    # The export loads back as a drafter and drafts exactly as the trained head.
    seq = [1, 4, 22, 5, 23, 30]
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
    feats = [torch.cat([hs[i][0, :-1] for i in (1, 2, 3)], dim=-1)]
    a = Eagle3Drafter(head).propose([seq], feats, 3, temperature=0.0, generator=None)
    b = Eagle3Drafter.from_pretrained(out, model).propose([seq], feats, 3, temperature=0.0, generator=None)
    assert torch.equal(a[1], b[1])
    assert _nothing_written(tmp_path / "never")  # sanity of the helper
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def _drop(name):
    return lambda ts: ts.pop(name)


def _set(name, value):
    return lambda ts: ts.__setitem__(name, value(ts))


def _eagle_ids(ids):
    return lambda c: c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", ids)


def _bad_d2t(ts):
    ts["d2t"] = ts["d2t"].clone()
    ts["d2t"][3] = 500


def _flip_t2d(ts):
    ts["t2d"] = ts["t2d"].clone()
    ts["t2d"][int(ts["d2t"][0])] = False


CASES = {
    "missing tensor": (dict(tensors=_drop("midlayer.hidden_norm.weight")), "missing"),
    "wrong shape": (dict(tensors=_set("fc.weight", lambda ts: ts["fc.weight"][:, :64].contiguous())), "shape"),
    "extra key": (dict(tensors=_set("midlayer.self_attn.rotary_emb.inv_freq", lambda ts: torch.ones(4))), "unexpected"),
    "bad d2t": (dict(tensors=_bad_d2t), "d2t"),
    "d2t/t2d disagree": (dict(tensors=_flip_t2d), "t2d"),
    "d2t dtype": (dict(tensors=_set("d2t", lambda ts: ts["d2t"].int())), "d2t"),
    "lm_head vs draft_vocab_size": (dict(config=lambda c: c.__setitem__("draft_vocab_size", 21)), "shape"),
    "layer id out of range": (dict(config=_eagle_ids([0, 1, 3])), "layer_ids"),
    "duplicate layer ids": (dict(config=_eagle_ids([1, 1, 2])), "layer_ids"),
    "unsorted layer ids": (dict(config=_eagle_ids([2, 1, 0])), "layer_ids"),
    "no layer ids": (dict(config=lambda c: c.pop("eagle_config")), "eagle_aux_hidden_state_layer_ids"),
    "wrong architecture": (dict(config=lambda c: c.__setitem__("architectures", ["LlamaForCausalLM"])), "architectures"),
    "two layers": (dict(config=lambda c: c.__setitem__("num_hidden_layers", 2)), "num_hidden_layers"),
    "fc_norm switch": (dict(config=lambda c: c.__setitem__("fc_norm", True)), "fc_norm"),
    "nan weights": (dict(tensors=_set("norm.weight", lambda ts: ts["norm.weight"] * float("nan"))), "NaN"),
    "embedding of another target": (dict(tensors=_set("embed_tokens.weight", lambda ts: torch.zeros(32, 32))), "embed_tokens"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_audit_failure_writes_nothing(trained, tmp_path, case):
    root, model, tok, head = trained
    changes, words = CASES[case]
    src = _corrupt(root / "run" / "head", tmp_path / "bad", **changes)
    out = tmp_path / "out" / "export"
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match=words) as info:
        export_drafter("eagle3", src, out, target_dir=root / "target")
    assert "\n" not in str(info.value)
    assert _nothing_written(out)


def test_target_too_shallow_for_the_layer_ids(trained, tmp_path):
    root, *_ = trained
    toy_target(num_layers=2, directory=tmp_path / "shallow")
    with pytest.raises(ConfigError, match="layer_ids"):
        export_drafter("eagle3", root / "run", tmp_path / "export", target_dir=tmp_path / "shallow")
    assert _nothing_written(tmp_path / "export")


def test_refuses_non_empty_output_and_unknown_kind(trained, tmp_path):
    root, *_ = trained
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_drafter("eagle3", root / "run", tmp_path / "export", target_dir=root / "target")
    assert (tmp_path / "export" / "keep.txt").read_text() == "mine"
    export_drafter("eagle3", root / "run", tmp_path / "export", target_dir=root / "target", overwrite=True)
    assert not (tmp_path / "export" / "keep.txt").exists()
    with pytest.raises(ConfigError, match="unknown drafter kind"):
        export_drafter("medusa", root / "run", tmp_path / "x", target_dir=root / "target")


# ----------------------------------------------------------------------------- standalone
def test_standalone_export_copies_a_loadable_model(trained, tmp_path):
    root, model, tok, _ = trained
    from opdplug_local import tiny

    draft = tiny.build_model("tiny", tok, seed=5)
    tiny.save_pretrained_pair(draft, tok, tmp_path / "draft")
    out = export_drafter("standalone", tmp_path / "draft", tmp_path / "export", target_dir=root / "target")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    loaded, loaded_tok = tiny.load_pretrained(out)
    assert loaded_tok.get_vocab() == tok.get_vocab()
    ids = torch.tensor([[1, 4, 22]])
    torch.testing.assert_close(loaded(ids).logits, draft(ids).logits)


def test_standalone_export_refuses_another_tokenizer(trained, tmp_path):
    root, model, tok, _ = trained
    from opdplug_local import tiny

    other_tok = tiny.build_tokenizer(["x", "y", *[w for w in tok.get_vocab() if w not in tiny.SPECIAL_TOKENS][:-2]])
    draft = tiny.build_model("tiny", other_tok, seed=5)
    tiny.save_pretrained_pair(draft, other_tok, tmp_path / "draft")
    with pytest.raises(ConfigError, match="tokenizer"):
        export_drafter("standalone", tmp_path / "draft", tmp_path / "export", target_dir=root / "target")
    assert _nothing_written(tmp_path / "export")


def test_standalone_export_refuses_pickles_and_vocab_mismatch(trained, tmp_path):
    root, model, tok, _ = trained
    from opdplug_local import tiny

    draft = tiny.build_model("tiny", tok, seed=5)
    tiny.save_pretrained_pair(draft, tok, tmp_path / "draft")
    (tmp_path / "draft" / "model.safetensors").rename(tmp_path / "draft" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pickle"):
        export_drafter("standalone", tmp_path / "draft", tmp_path / "export", target_dir=root / "target")
    bigger = tiny.build_model(dict(tiny.SIZES["tiny"], vocab_size=40), tok, seed=5)
    tiny.save_pretrained_pair(bigger, tok, tmp_path / "bigger")
    with pytest.raises(ConfigError, match="vocab_size"):
        export_drafter("standalone", tmp_path / "bigger", tmp_path / "export", target_dir=root / "target")
    assert _nothing_written(tmp_path / "export")
