"""SGLang's own LlamaForCausalLMEagle3 loads an exported head completely (the sglang lane).

Runs ``opdplug_drafters/eagle3/sglang_check.py`` with SGLang's Python (its own venv: SGLang cannot
be imported beside opdplug's torch). On CPU it builds SGLang's class from the exported config,
fills every parameter with NaN, feeds ``load_weights`` the exported safetensors, and checks every
parameter was set from the file (the loader skips unknown names silently), every file tensor was
consumed, ``hot_token_id`` is ``d2t + arange`` and agrees with ``t2d``, and that SGLang's own
modules recompute the head's logits over a reference input.
"""
import os
from pathlib import Path

import pytest
import torch

from opdplug_drafters.eagle3 import save_head
from opdplug_drafters.eagle3.toy import toy_head, toy_target
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


def load_file_keys(export_dir):
    from safetensors import safe_open

    with safe_open(str(Path(export_dir) / "model.safetensors"), framework="pt") as f:
        return list(f.keys())
