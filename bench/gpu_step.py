"""Performance 4: one OPD step in bf16 on a GPU, with its MFU against the device's measured peak.

Builds a student and a teacher from config (random weights) and times the pieces of opdplug's
OPD step on random prompts. Sizes (``--size``):

* ``realistic`` (default): the shapes of ``vs_trl.py --size realistic``: a ~22M Llama student
  (hidden 384, 6 layers) and a ~88M teacher (hidden 768, 10 layers), vocabulary 16384;
* ``0.5b``: student and teacher both shaped like a 0.5B Llama (hidden 896, 24 layers, 14 query /
  2 key-value heads, MLP 4864, vocabulary 151936);
* ``tiny``: a smoke test of the script itself (``--smoke`` = ``--device cpu --size tiny`` with a
  few tokens).

The phases are run the way ``opdplug.loop.train_step`` runs them:

1. rollout: ``sampling.sample`` (KV-cached; the no-grad fast path when the model is a plain Llama),
2. scoring: ``local.score_with_model`` on the teacher (dense: hidden states + lm_head),
3. loss: ``full`` support (chunked, checkpointed full-vocabulary reverse KL) on the student's
   hidden states, then backward and an AdamW step.

Reports tokens per second per phase and for the whole step; MFU per phase and for the step: the
FLOPs an OPD step must do, counted as ``opdplug_local.demo.flops_of_run`` counts them (2N per
token forward for generation and scoring, 6N per token for the student's update), over the
phase's time, against the best ``torch.matmul`` rate measured on the device in the run's dtype
on the step's dominant shapes (the MLPs and lm-heads at the step's token count); peak memory
(``torch.cuda.max_memory_allocated``), and the chunked loss's achieved memory bandwidth against
the device's measured copy bandwidth (a large device-to-device ``copy_``). The bandwidth of the
loss counts the bytes its [chunk, V] float32 intermediates must at least move: per token and
vocabulary entry, forward writes and reads the student and teacher logits and log-probs
(8 x 4 bytes), the backward recomputation does it again for the student side (4 x 4 bytes) and
writes and reads the logits' gradient (2 x 4 bytes): 56 bytes per (token, vocabulary entry).
This is a floor on the traffic, so the achieved bandwidth it gives is a lower bound.

    python bench/gpu_step.py                          # needs a CUDA device: realistic size, bf16
    python bench/gpu_step.py --size 0.5b              # the 0.5B shapes
    python bench/gpu_step.py --smoke                  # smoke test of the script itself (CPU, seconds)

Writes runs/bench/gpu_step.json; the last printed line is the headline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_HALF_B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
               intermediate_size=4864, vocab_size=151936)  # about 0.49B parameters with untied embeddings
_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=512)
SHAPES = {  # size -> (student shape, teacher shape)
    "realistic": (  # vs_trl_realistic.RealisticRecipe's student and teacher
        dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
             intermediate_size=1024, vocab_size=16384),
        dict(hidden_size=768, num_hidden_layers=10, num_attention_heads=12, num_key_value_heads=4,
             intermediate_size=2048, vocab_size=16384)),
    "0.5b": (_HALF_B, _HALF_B),
    "tiny": (_TINY, _TINY),
}
BYTES_PER_TOKEN_VOCAB = 56  # the floor of the chunked loss's traffic (module docstring)


def build(shape: dict, seed: int, dtype, device):
    import transformers

    config = transformers.LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2, attention_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def copy_bandwidth(device, gib: float = 1.0, reps: int = 5) -> float:
    """Device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    n = int(gib * 2**30) // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    times = [timed(lambda: b.copy_(a), device)[1] for _ in range(reps)]
    return 2 * a.numel() * 4 / statistics.median(times) / 1e9


def matmul_peak(shapes: dict, rows: int, dtype, device, reps: int = 5) -> dict:
    """Best TFLOP/s of ``torch.matmul`` in ``dtype`` on ``device`` over the step's dominant shapes."""
    per = {}
    for role, shape in shapes.items():
        H = shape["hidden_size"]
        for name, n in (("MLP", shape["intermediate_size"]), ("lm-head", shape["vocab_size"])):
            a = torch.randn(rows, H, dtype=dtype, device=device)
            b = torch.randn(H, n, dtype=dtype, device=device)
            a @ b
            t = min(timed(lambda: a @ b, device)[1] for _ in range(reps))
            per[f"{role} {name}"] = 2 * rows * H * n / t / 1e12
    return {"peak_tflops": max(per.values()), "per_shape_tflops": per}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=sorted(SHAPES), default="realistic")
    p.add_argument("--smoke", action="store_true", help="--device cpu --size tiny, batch 2, 8 + 6 tokens: checks the script runs")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "gpu_step.json"))
    a = p.parse_args()
    if a.smoke:
        a.device, a.size, a.batch, a.prompt_len, a.new_tokens, a.chunk, a.steps = "cpu", "tiny", 2, 8, 6, 16, 1
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_step: no CUDA device here; run it on a GPU machine (or --device cpu --size tiny to check the script)")
        return 2
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)

    from opdplug_local import fastpath, models as local, sampling
    from opdplug.types import PRODUCER_STUDENT, Prompt, StudentOutputs
    from opdplug_token.divergences import ReverseKL
    from opdplug_token.supports import Full

    shape, teacher_shape = SHAPES[a.size]
    student, teacher = build(shape, 0, dtype, device), build(teacher_shape, 1, dtype, device).eval()
    teacher.requires_grad_(False)
    n_params = sum(x.numel() for x in student.parameters())
    n_teacher = sum(x.numel() for x in teacher.parameters())
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    V = shape["vocab_size"]
    prompts = [Prompt(prompt_ids=tuple(torch.randint(3, V, (a.prompt_len,), generator=gen).tolist())) for _ in range(a.batch)]

    class _Tok:  # what model_rollout reads from a tokenizer
        eos_token_id, pad_token_id = 2, 0

    def step():
        batch, t_gen = timed(lambda: local.model_rollout(
            student, prompts, producer=PRODUCER_STUDENT, max_new_tokens=a.new_tokens, temperature=1.0, top_p=1.0,
            tokenizer=_Tok, generator=torch.Generator().manual_seed(1), on_policy=True), device)
        scores, t_score = timed(lambda: local.score_with_model(teacher, batch, temperature=1.0, top_k=0, chunk_size=a.chunk), device)

        def loss_and_update():
            ids, attn = batch.input_ids_B_L.to(device), batch.attention_mask_B_L.to(device)
            hidden = sampling.final_hidden(student, ids, attn)
            out = Full()(ReverseKL(), StudentOutputs(hidden_B_L_H=hidden, lm_head_V_H=sampling.lm_head_weight(student)),
                         scores, batch, batch.loss_mask_B_L.to(device).bool(), top_k=0, chunk_size=a.chunk)
            n = int(batch.loss_mask_B_L.sum())
            (out.values_B_L.sum() / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return n

        n_loss, t_update = timed(loss_and_update, device)
        return {"generation_s": t_gen, "scoring_s": t_score, "update_s": t_update, "loss_tokens": n_loss,
                "sequence_tokens": int(batch.attention_mask_B_L.sum())}

    def loss_only(n_tokens: int):
        """The chunked loss alone (forward + backward) on n_tokens random rows: its bandwidth."""
        H = shape["hidden_size"]
        g = torch.Generator(device=device).manual_seed(2)
        h_s = torch.randn(1, n_tokens, H, device=device, dtype=dtype, generator=g).requires_grad_(True)
        h_t = torch.randn(1, n_tokens, H, device=device, dtype=dtype, generator=g)
        w_s = sampling.lm_head_weight(student)
        w_t = sampling.lm_head_weight(teacher)
        from opdplug.types import RolloutBatch, TeacherScores

        ones = torch.ones(1, n_tokens, dtype=torch.long, device=device)
        batch = RolloutBatch(input_ids_B_L=ones, attention_mask_B_L=ones, loss_mask_B_L=ones, producer_B_L=ones,
                             sampling_logprobs_B_L=torch.zeros(1, n_tokens, device=device),
                             prompt_lens_B=torch.zeros(1, dtype=torch.long, device=device))
        scores = TeacherScores(token_logprobs_B_L=torch.zeros(1, n_tokens, device=device), hidden_B_L_H=h_t, lm_head_V_H=w_t)
        out = Full()(ReverseKL(), StudentOutputs(hidden_B_L_H=h_s, lm_head_V_H=w_s), scores, batch, ones.bool(),
                     top_k=0, chunk_size=a.chunk)
        out.values_B_L.sum().backward()
        student.zero_grad(set_to_none=True)

    print(f"{a.size}: student {n_params / 1e6:.1f}M, teacher {n_teacher / 1e6:.1f}M parameters, {a.dtype}, {device}; batch {a.batch}, prompt {a.prompt_len}, "
          f"{a.new_tokens} new tokens; fast path: {fastpath.unsupported_reason(student) or 'on'}", flush=True)
    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [step() for _ in range(a.steps)]
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    n_tokens = a.batch * (a.new_tokens + a.prompt_len)
    loss_only(min(n_tokens, 2 * a.chunk))  # warm-up
    loss_times = [timed(lambda: loss_only(n_tokens), device)[1] for _ in range(3)]
    loss_bw = BYTES_PER_TOKEN_VOCAB * n_tokens * V / statistics.median(loss_times) / 1e9
    copy_bw = copy_bandwidth(device, gib=1.0 if device.type == "cuda" else 0.05)

    med = {k: statistics.median(r[k] for r in runs) for k in ("generation_s", "scoring_s", "update_s")}
    gen_tok = statistics.median(r["loss_tokens"] for r in runs)
    seq_tok = statistics.median(r["sequence_tokens"] for r in runs)
    step_s = sum(med.values())
    peak = matmul_peak({"student": shape, "teacher": teacher_shape}, int(seq_tok), dtype, device)
    flops = {"generation_s": 2 * n_params * seq_tok, "scoring_s": 2 * n_teacher * seq_tok, "update_s": 6 * n_params * seq_tok}
    mfu = {k: flops[k] / med[k] / 1e12 / peak["peak_tflops"] for k in flops}
    mfu["step"] = sum(flops.values()) / step_s / 1e12 / peak["peak_tflops"]
    rows = [("generation (student tokens/s)", gen_tok / med["generation_s"]),
            ("teacher scoring (sequence tokens/s)", seq_tok / med["scoring_s"]),
            ("loss + backward + AdamW (sequence tokens/s)", seq_tok / med["update_s"]),
            ("whole step (student tokens/s)", gen_tok / step_s)]
    for name, v in rows:
        print(f"{name:46s}{v:12.0f}")
    for k, name in (("generation_s", "generation"), ("scoring_s", "teacher scoring"), ("update_s", "loss + backward + AdamW"), ("step", "whole step")):
        print(f"{'MFU ' + name:46s}{mfu[k]:12.1%}")
    print(f"{'matmul peak (TFLOP/s, ' + a.dtype + ', measured)':46s}{peak['peak_tflops']:12.2f}")
    print(f"{'peak memory (GiB)':46s}{peak_gib:12.2f}")
    print(f"{'chunked loss bandwidth (GB/s, lower bound)':46s}{loss_bw:12.1f}")
    print(f"{'device copy bandwidth (GB/s)':46s}{copy_bw:12.1f}")
    result = {"settings": vars(a), "params": n_params, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "phases_s": med, "tokens_per_s": dict(rows), "peak_gib": peak_gib, "loss_bandwidth_gbs": loss_bw,
              "copy_bandwidth_gbs": copy_bw, "runs": runs, "teacher_params": n_teacher, "flops_per_step": flops,
              "matmul_peak": peak, "mfu": mfu, "step_s": step_s}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"HEADLINE {a.size} {a.dtype}: step {step_s * 1e3:.1f} ms, MFU {mfu['step']:.1%} of {peak['peak_tflops']:.1f} TFLOP/s, "
          f"{gen_tok / step_s:.0f} student tokens/s per OPD step, peak {peak_gib:.1f} GiB, "
          f"chunked loss at {loss_bw / copy_bw:.2f}x of copy bandwidth ({loss_bw:.0f} / {copy_bw:.0f} GB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
