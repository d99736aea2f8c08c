"""Model FLOPs utilisation of a distillation step, against this machine's measured matmul peak.

FLOPs are those an OPD step must do, counted as ``opdplug_local.demo.flops_of_run`` counts them
(2N per token forward, 6N per token trained, N = all parameters, embeddings included) over the
step's sequence tokens S (prompt + completion, padding excluded):

* rollout (student generation): 2 N_student S (the generator's forward over every sequence token)
* teacher scoring: 2 N_teacher S
* student forward (+ loss): 2 N_student S
* student backward: 4 N_student S
* optimizer: not counted (O(N), no matmul)

Attention's own products (O(S L H) per layer) are left out, as the demo leaves them out; at
L ~ 150 and H >= 384 they are a few per cent. The demo's count also charges the input embedding
(a table lookup, no FLOPs) and the lm-head at prompt positions (which opdplug and Distillation
skip; GKD computes it), so it overstates the arithmetic; ``step_mfu_no_embedding`` is the step's
MFU with the input-embedding parameters left out of N, printed beside it. The peak is what ``torch.matmul`` reaches here, at
the workers' thread count, on the step's dominant shapes (the teacher's MLP, both lm-heads),
taking the best; measured in the driver process just before the runs and again after them, since
the machine is shared and its speed drifts.
"""
from __future__ import annotations

import statistics
import time

PHASE_FLOPS_PER_TOKEN = {  # phase name (as the workers time them) -> (which model, multiplier of N)
    "generation": ("student", 2),
    "teacher forward": ("teacher", 2),
    "student fwd + loss": ("student", 2),
    "backward": ("student", 4),
    "optimizer (+clip)": (None, 0),
    "rest (loop, data, hooks)": (None, 0),
}


def param_counts(student_dir: str, teacher_dir: str) -> dict:
    """Parameters of both models, and the shapes the peak is measured on (from their configs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for role, path in (("student", student_dir), ("teacher", teacher_dir)):
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        embed = model.get_input_embeddings().weight.numel()
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        out[role] = {"params": sum(p.numel() for p in model.parameters()), "embedding": 0 if tied else embed,
                     "hidden": config.hidden_size, "layers": config.num_hidden_layers,
                     "vectors": sum(p.numel() for p in model.parameters() if p.dim() == 1),  # norms, biases: no matmul
                     "intermediate": config.intermediate_size, "vocab": config.vocab_size}
    return out


def phase_flops(models: dict, seq_tokens: float) -> dict:
    """FLOPs per phase of one step with ``seq_tokens`` sequence tokens."""
    return {k: (mult * models[who]["params"] * seq_tokens if who else 0.0) for k, (who, mult) in PHASE_FLOPS_PER_TOKEN.items()}


def required_flops(models: dict, seq_tokens: float, completion_tokens: float, rows: int) -> dict:
    """The least arithmetic one OPD step needs, per phase: what no system can skip.

    Every sequence token goes through every decoder layer (the prompt's keys and values are
    needed), the lm-heads run on completion positions only (the logits that are sampled from or
    compared), attention is causal (2 L^2 H per layer and row for q.k and the weighted sum), and
    the student's backward is twice its forward. The input embedding is a lookup (0 FLOPs). Rows
    are taken as equally long (L = S / rows), which slightly undercounts attention."""
    L = seq_tokens / max(rows, 1)
    per = {}
    for role, m in models.items():
        decoder = m["params"] - m["embedding"] - m["vocab"] * m["hidden"] - m.get("vectors", 0)  # lm-head apart
        attention = 2 * L * L * m["hidden"] * m["layers"] * rows
        per[role] = 2 * decoder * seq_tokens + 2 * m["vocab"] * m["hidden"] * completion_tokens + attention
    return {"generation": per["student"], "teacher forward": per["teacher"],
            "student fwd + loss": per["student"], "backward": 2 * per["student"]}


def floor_summary(models: dict, runs: list, rows: int, peak_gflops: float, step_ms: dict) -> dict:
    """The step's required FLOPs (``required_flops``, token counts of ``runs``: opdplug's) at the
    measured peak: a lower bound on any system's step time here, and each system's step against it.
    A lower bound only: decoding one token at a time is bound by memory traffic, not arithmetic."""
    seq = statistics.median(x for r in runs for x in r["seq_tokens"])
    comp = statistics.median(x for r in runs for x in r.get("completion_tokens", [])) if runs[0].get("completion_tokens") else None
    if comp is None:
        return {}
    flops = required_flops(models, seq, comp, rows)
    floor_ms = sum(flops.values()) / (peak_gflops * 1e9) * 1e3
    return {"seq_tokens": seq, "completion_tokens": comp, "gflop": {k: v / 1e9 for k, v in flops.items()},
            "floor_ms": floor_ms, "step_over_floor": {s: ms / floor_ms for s, ms in step_ms.items()}}


def matmul_peak(models: dict, rows: int, threads: int, reps: int = 3) -> dict:
    """Best GFLOP/s of ``torch.matmul`` (float32) over the step's dominant shapes at ``threads``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    s, t = models["student"], models["teacher"]
    shapes = {"teacher MLP": (rows, t["hidden"], t["intermediate"]), "teacher lm-head": (rows, t["hidden"], t["vocab"]),
              "student lm-head": (rows, s["hidden"], s["vocab"]), "student MLP": (rows, s["hidden"], s["intermediate"])}
    per_shape = {}
    try:
        for name, (m, k, n) in shapes.items():
            a, b = torch.randn(m, k), torch.randn(k, n)
            a @ b  # warm-up
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - t0)
            per_shape[name] = {"shape": [m, k, n], "gflops": 2 * m * k * n / min(times) / 1e9}
    finally:
        torch.set_num_threads(old)
    return {"peak_gflops": max(v["gflops"] for v in per_shape.values()), "per_shape": per_shape, "threads": threads}


def mfu_summary(models: dict, runs: list, phase_ms_per_step: dict, step_s_median: float, peak_gflops: float) -> dict:
    """Per phase and whole step: FLOPs per step, achieved GFLOP/s and the fraction of the peak."""
    seq = statistics.median(x for r in runs for x in r["seq_tokens"])
    flops = phase_flops(models, seq)
    out = {"seq_tokens_per_step": seq, "peak_gflops": peak_gflops, "phases": {}}
    for k, f in flops.items():
        ms = phase_ms_per_step.get(k, 0.0)
        g = f / (ms / 1e3) / 1e9 if ms > 0 and f > 0 else None
        out["phases"][k] = {"gflop": f / 1e9, "ms": ms, "gflops": g, "mfu": g / peak_gflops if g else None}
    total = sum(flops.values())
    out["step"] = {"gflop": total / 1e9, "ms": step_s_median * 1e3, "gflops": total / step_s_median / 1e9,
                   "mfu": total / step_s_median / 1e9 / peak_gflops}
    lean = {r: {**m, "params": m["params"] - m["embedding"]} for r, m in models.items()}
    out["step_mfu_no_embedding"] = sum(phase_flops(lean, seq).values()) / step_s_median / 1e9 / peak_gflops
    return out
