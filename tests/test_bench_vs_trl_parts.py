"""The measuring parts of bench/vs_trl.py that run without TRL: the training-phase RSS sampler
and the FLOPs / MFU arithmetic (which must count FLOPs exactly as the demo does)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_rss_sampler_sees_memory_allocated_during_the_phase_only():
    import numpy as np

    from rss_sampler import RssSampler

    s = RssSampler(interval_s=0.001).start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    import time

    time.sleep(0.05)
    del block
    s.stop()
    assert s.samples > 1 and s.peak - s.at_start >= 48 * 2**20


def test_phase_flops_add_up_to_the_demo_count():
    from opdplug_local.demo import flops_of_run
    from vs_trl_mfu import mfu_summary, phase_flops

    models = {"student": {"params": 1000, "embedding": 100}, "teacher": {"params": 4000, "embedding": 200}}
    flops = phase_flops(models, 50.0)
    assert sum(flops.values()) == pytest.approx(flops_of_run([{"rollout/sequence_tokens_total": 50.0}], 1000, 4000, "student"))
    assert flops["backward"] == 2 * flops["student fwd + loss"] and flops["optimizer (+clip)"] == 0
    runs = [{"seq_tokens": [50.0, 50.0]}]
    ms = {k: 1.0 for k in flops}
    out = mfu_summary(models, runs, ms, step_s_median=0.01, peak_gflops=1.0)
    assert out["step"]["mfu"] == pytest.approx(sum(flops.values()) / 0.01 / 1e9)
    assert out["phases"]["optimizer (+clip)"]["mfu"] is None
    assert out["step_mfu_no_embedding"] < out["step"]["mfu"]


def test_required_flops_match_what_torch_counts_for_a_llama_forward():
    """The floor's count (decoder layers on every token, lm-head on completion tokens only, causal
    attention) against torch's own FLOP counter on a Llama forward that does exactly that work."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from vs_trl_mfu import required_flops

    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    rows, length, completion = 3, 10, 4
    ids = torch.randint(0, 101, (rows, length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        hidden = model.model(input_ids=ids).last_hidden_state
        model.lm_head(hidden[:, -completion:])
    counts = counter.get_flop_counts()["Global"]
    linear = sum(v for op, v in counts.items() if "bmm" not in str(op))
    attention_full = sum(v for op, v in counts.items() if "bmm" in str(op))  # eager: q.k and the weighted sum
    m = {"params": sum(p.numel() for p in model.parameters()), "embedding": cfg.vocab_size * cfg.hidden_size,
         "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers, "vocab": cfg.vocab_size,
         "vectors": sum(p.numel() for p in model.parameters() if p.dim() == 1)}
    got = required_flops({"student": m, "teacher": m}, rows * length, rows * completion, rows)
    causal_attention = 2 * length * length * cfg.hidden_size * cfg.num_hidden_layers * rows
    assert got["teacher forward"] - causal_attention == linear
    assert attention_full == 2 * causal_attention  # eager computes the full square; the floor the causal half
    assert got["backward"] == 2 * got["student fwd + loss"]


def test_final_kl_comparison_is_paired_by_seed_and_calls_noise_equal():
    from vs_trl import kl_comparison

    def runs(opd, gkd, distill):
        return {s: [{"eval": {"reverse_kl": v}} for v in vals] for s, vals in
                (("opdplug", opd), ("trl", gkd), ("distill", distill))}

    # seeds move every system together; opdplug lower by 0.1 on each seed: lower, not noise
    cmp = kl_comparison(runs([3.0, 3.4, 3.2], [3.1, 3.5, 3.3], [3.0, 3.45, 3.15]))
    assert cmp["trl"]["verdict"] == "lower" and abs(cmp["trl"]["mean"] + 0.1) < 1e-9
    assert cmp["distill"]["verdict"] == "equal within noise"
    assert kl_comparison(runs([3.5, 3.6], [3.0, 3.1], [3.5, 3.6]))["trl"]["verdict"] == "higher"
