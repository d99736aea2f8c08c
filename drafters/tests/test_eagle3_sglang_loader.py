"""SGLang's own LlamaForCausalLMEagle3 loads an exported head completely (the sglang lane).

Runs ``opdplug_drafters/eagle3/sglang_check.py`` with SGLang's Python (its own venv: SGLang cannot
be imported beside opdplug's torch). On CPU it builds SGLang's class from the exported config,
fills every parameter with NaN, feeds ``load_weights`` the exported safetensors, and checks every
parameter was set from the file (the loader skips unknown names silently), every file tensor was
consumed, ``hot_token_id`` is ``d2t + arange`` and agrees with ``t2d``, and that SGLang's own
modules recompute the head's logits over a reference input. The same for heads of Llama, Qwen2
and Qwen3 targets (real BPE tokenizers, Qwen3's wide heads, Qwen's rope base), in the EAGLE-3 and
EAGLE-3.1 variants (and ``norm_before_fc``): SGLang builds the variant's norms from the exported
config, and every one of them is set from the file and used in the recomputed forward.
"""
import os
from pathlib import Path

import pytest
import torch

from opdplug_drafters.eagle3 import save_head
from opdplug_drafters.eagle3.config import HeadNorms, head_norms
from opdplug_drafters.eagle3.toy import arch_target, toy_head, toy_target
from opdplug_drafters.export import export_drafter, sglang_load_report, write_sglang_reference

REPO = Path(__file__).resolve().parents[2]
SGLANG_PYTHON = Path(os.environ.get("OPDPLUG_SGLANG_PYTHON", REPO / ".venv-sglang" / "bin" / "python"))

pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(not SGLANG_PYTHON.exists(), reason=f"no SGLang venv at {SGLANG_PYTHON} (set OPDPLUG_SGLANG_PYTHON)"),
]


@pytest.mark.parametrize("draft_vocab_size", [20, None], ids=["reduced-vocab", "full-vocab"])
def test_sglang_loads_every_parameter(tmp_path, draft_vocab_size):
    model, tok = toy_target(num_layers=4, directory=tmp_path / "target")
    head = toy_head(model, draft_vocab_size=draft_vocab_size)
    with torch.no_grad():  # every tensor distinct from its initial value, so a skipped one shows
        for name, p in head.named_parameters():
            if name != "embed_tokens.weight":
                p.add_(torch.randn_like(p) * 0.1)
    save_head(head, tmp_path / "run" / "head")
    out = export_drafter("eagle3", tmp_path / "run", tmp_path / "export", target_dir=tmp_path / "target")
    reference = write_sglang_reference(head, tmp_path / "reference.safetensors")

    report = sglang_load_report(out, python=SGLANG_PYTHON, reference=reference)

    assert report["problems"] == []
    assert report["architecture"] == "LlamaForCausalLMEagle3"
    assert report["unset_params"] == []
    consumed = {key for key, _, _ in report["calls"]}
    assert consumed == set(load_file_keys(out)) - {"d2t", "t2d"}  # d2t -> hot_token_id; t2d skipped by SGLang
    assert report["hot_token_id"] == head.draft_to_target_Vd.tolist()
    assert report["max_abs_diff_logits"] < 1e-4 and report["max_abs_diff_hidden"] < 1e-4
    # The stacked projections land in the right shards.
    shards = {(key, str(shard)) for key, name, shard in report["calls"] if shard is not None}
    assert ("midlayer.self_attn.q_proj.weight", "q") in shards and ("midlayer.mlp.up_proj.weight", "1") in shards


VARIANTS = [("llama", "eagle3"), ("llama", "eagle3.1"), ("qwen2", "eagle3"), ("qwen2", "eagle3.1"),
            ("qwen3", "eagle3"), ("qwen3", "eagle3.1"), ("qwen3", HeadNorms(norm_before_fc=True))]


@pytest.mark.parametrize("arch,variant", VARIANTS, ids=[f"{a}-{v if isinstance(v, str) else 'norm_before_fc'}" for a, v in VARIANTS])
def test_sglang_loads_heads_of_every_target_family_and_variant(tmp_path, arch, variant):
    model, tok = arch_target(arch, tmp_path / "target")
    head = toy_head(model, draft_vocab_size=64, variant=variant, always=(tok.eos_token_id,))
    with torch.no_grad():  # every tensor away from its initial value (norms away from 1)
        for name, p in head.named_parameters():
            if name != "embed_tokens.weight":
                p.add_(torch.randn_like(p) * 0.1)
    save_head(head, tmp_path / "run" / "head")
    out = export_drafter("eagle3", tmp_path / "run", tmp_path / "export", target_dir=tmp_path / "target")
    reference = write_sglang_reference(head, tmp_path / "reference.safetensors")

    report = sglang_load_report(out, python=SGLANG_PYTHON, reference=reference)

    assert report["problems"] == [] and report["unset_params"] == []
    norms = head_norms(variant)
    assert report["variant_norms"] == {"input_norm": norms.norm_before_fc, "fc_norm": norms.fc_norm,
                                       "norm_output": norms.norm_output}
    consumed = {key for key, _, _ in report["calls"]}
    assert consumed == set(load_file_keys(out)) - {"d2t", "t2d"}
    if norms.fc_norm:
        assert {("fc_norm.0.weight", "model.fc_norm.0.weight"), ("fc_norm.2.weight", "model.fc_norm.2.weight")} <= {
            (key, name) for key, name, _ in report["calls"]}
    if norms.norm_before_fc:
        assert ("input_norm.weight", "model.input_norm.weight") in {(key, name) for key, name, _ in report["calls"]}
    q_rows = report["params"]["model.layers.0.self_attn.qkv_proj.weight"][0]
    D = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    assert q_rows == (model.config.num_attention_heads + 2 * model.config.num_key_value_heads) * D  # Qwen3's wide heads
    assert report["max_abs_diff_logits"] < 1e-4 and report["max_abs_diff_hidden"] < 1e-4


def load_file_keys(export_dir):
    from safetensors import safe_open

    with safe_open(str(Path(export_dir) / "model.safetensors"), framework="pt") as f:
        return list(f.keys())
