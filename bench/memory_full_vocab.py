"""Peak memory of the full-vocabulary loss at real vocabulary sizes: chunked (opdplug) vs naive.

For reverse KL and generalized JSD (beta 0.5), B = 1, sequence length T in {1024, 2048, 4096}
and vocabulary V in {32000, 128256, 151936}, measures the peak resident memory of one forward +
backward pass of

* ``naive``: both models' ``[B, T, V]`` logits materialized (student's with grad, teacher's under
  no_grad), then the divergence the way TRL's ``GKDTrainer.generalized_jsd_loss`` computes it
  (TRL's own function, imported): log_softmax of both, the KL/JSD on the full tensors, backward;
* ``full``: opdplug's chunked ``full`` support (``opdplug_token.supports.Full``), called the way
  the core's ``opd_loss`` calls it: ``support(divergence, StudentOutputs, TeacherScores,
  RolloutBatch, mask, top_k=, chunk_size=)``, then the ``direct`` update (sum of values), backward;
* ``teacher_topk`` / ``student_topk`` (K = 64, dense teacher), chunked the same way.

The student is hidden ``[1, T, H]`` + lm_head ``[V, H]``, both requiring grad; the teacher is
hidden + lm_head, dense, no grad. Every (method, divergence, V, T, chunk) runs in its own
subprocess; peak = peak RSS (VmHWM, reset through /proc/self/clear_refs after the inputs are built,
else ru_maxrss) minus the process's RSS after imports and inputs (VmRSS). Naive cases whose
estimated peak (bytes per T*V element measured on the smaller sizes, x1.15; 16 x 4 bytes before
the first measurement) exceeds --naive-cap-gib, or that would leave less than 3 GiB of the
machine's available memory, are skipped and printed as ``skipped (est. X GiB)``.

Also checks correctness (a separate subprocess, both fit): loss and gradients w.r.t. the
student's hidden states and lm_head of ``full`` vs naive.

    .venv/bin/python bench/memory_full_vocab.py            # the default table (< 10 min on 2 cores)
    .venv/bin/python bench/memory_full_vocab.py --grid full --sweep-chunks 64,1024   # every (method, V, T) (~40 min)
    .venv/bin/python bench/memory_full_vocab.py --quick    # small sizes only

Writes runs/bench/memory_full_vocab.json and runs/bench/memory_full_vocab.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
VOCABS = (32000, 128256, 151936)
LENGTHS = (1024, 2048, 4096)


# ----------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- the losses
def trl_generalized_jsd_loss():
    """TRL's own ``GKDTrainer.generalized_jsd_loss``: the naive [B, T, V] computation compared with."""
    try:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    except ImportError as e:
        raise SystemExit(f"this benchmark compares with TRL, which does not import ({e}); run `make bench-env` first")
    return GKDTrainer.generalized_jsd_loss, "trl"


def make_inputs(V: int, T: int, H: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    # Scales giving peaked but not one-hot distributions (logit std ~ 3).
    h_s = (torch.randn(1, T, H, generator=g) ).requires_grad_(True)
    w_s = (torch.randn(V, H, generator=g) * (3.0 / H ** 0.5)).requires_grad_(True)
    h_t = torch.randn(1, T, H, generator=g)
    w_t = torch.randn(V, H, generator=g) * (3.0 / H ** 0.5)
    tokens = torch.randint(0, V, (1, T), generator=g)
    return h_s, w_s, h_t, w_t, tokens


def naive_loss(div: str, h_s, w_s, h_t, w_t, reduction="sum"):
    import torch

    fn, _ = trl_generalized_jsd_loss()
    student_logits = h_s @ w_s.T  # [1, T, V], with grad
    with torch.no_grad():
        teacher_logits = h_t @ w_t.T
    beta = 1.0 if div == "reverse_kl" else 0.5  # TRL: beta = 1 is KL(student || teacher)
    return fn(student_logits, teacher_logits, beta=beta, reduction=reduction)


def chunked_loss(method: str, div: str, h_s, w_s, h_t, w_t, tokens, chunk: int, top_k: int = 64):
    """The support called as opdplug_local.plugin.opd_loss calls it, then the direct update (weights 1)."""
    import torch

    from opdplug.types import RolloutBatch, StudentOutputs, TeacherScores
    from opdplug_token.divergences import GeneralizedJSD, ReverseKL
    from opdplug_token.supports import Full, StudentTopK, TeacherTopK

    support = {"full": Full(), "teacher_topk": TeacherTopK(), "student_topk": StudentTopK()}[method]
    divergence = ReverseKL() if div == "reverse_kl" else GeneralizedJSD(beta=0.5)
    B, T = tokens.shape
    ones = torch.ones(B, T, dtype=torch.long)
    batch = RolloutBatch(
        input_ids_B_L=tokens, attention_mask_B_L=ones, loss_mask_B_L=ones, producer_B_L=ones,
        sampling_logprobs_B_L=torch.zeros(B, T), prompt_lens_B=torch.zeros(B, dtype=torch.long),
    )
    student = StudentOutputs(hidden_B_L_H=h_s, lm_head_V_H=w_s, temperature=1.0)
    scores = TeacherScores(token_logprobs_B_L=torch.zeros(B, T), hidden_B_L_H=h_t, lm_head_V_H=w_t, temperature=1.0)
    mask_B_L = batch.loss_mask_B_L.bool()
    result = support(divergence, student, scores, batch, mask_B_L, top_k=top_k, chunk_size=chunk)
    return result.values_B_L.sum()  # ``direct`` update with unit weights, summed as LossOutput.loss_sum


# ----------------------------------------------------------------------------- one case (child)
def run_case(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import opdplug_token.supports  # noqa: F401  (imports before the baseline)
    if spec["method"] == "naive":
        trl_generalized_jsd_loss()
    # Warm-up on tiny inputs through the same code path: faults in the library code pages and
    # one-time allocations, which would otherwise count as ~0.5-1 GiB of "peak" in every case.
    wh_s, ww_s, wh_t, ww_t, wtok = make_inputs(2000, 64, spec["H"])
    for _ in range(2):
        if spec["method"] == "naive":
            naive_loss(spec["div"], wh_s, ww_s, wh_t, ww_t).backward()
        else:
            chunked_loss(spec["method"], spec["div"], wh_s, ww_s, wh_t, ww_t, wtok, min(spec["chunk"], 32)).backward()
    del wh_s, ww_s, wh_t, ww_t, wtok
    h_s, w_s, h_t, w_t, tokens = make_inputs(spec["V"], spec["T"], spec["H"])
    base_kib = _status_kib("VmRSS")
    reset = _reset_peak()
    if not reset:
        import resource
    t0 = time.perf_counter()
    if spec["method"] == "naive":
        loss = naive_loss(spec["div"], h_s, w_s, h_t, w_t)
    else:
        loss = chunked_loss(spec["method"], spec["div"], h_s, w_s, h_t, w_t, tokens, spec["chunk"])
    loss.backward()
    seconds = time.perf_counter() - t0
    peak_kib = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inputs_bytes = sum(t.numel() * t.element_size() for t in (h_s, w_s, h_t, w_t, tokens))
    return {**spec, "peak_gib": (peak_kib - base_kib) * 1024 / GIB, "baseline_gib": base_kib * 1024 / GIB,
            "inputs_gib": inputs_bytes / GIB, "seconds": seconds, "loss": float(loss.detach()),
            "peak_probe": "VmHWM after clear_refs" if reset else "ru_maxrss"}


def run_check(spec: dict) -> dict:
    """Chunked `full` vs naive: loss and gradients w.r.t. student hidden and lm_head."""
    import torch

    torch.set_num_threads(spec["threads"])
    out = {"V": spec["V"], "T": spec["T"], "H": spec["H"], "chunk": spec["chunk"], "naive_impl": trl_generalized_jsd_loss()[1]}
    for div in ("reverse_kl", "jsd"):
        h_s, w_s, h_t, w_t, tokens = make_inputs(spec["V"], spec["T"], spec["H"], seed=1)
        ref = naive_loss(div, h_s, w_s, h_t, w_t)
        ref.backward()
        g_ref = (h_s.grad.clone(), w_s.grad.clone())
        h_s.grad = None
        w_s.grad = None
        got = chunked_loss("full", div, h_s, w_s, h_t, w_t, tokens, spec["chunk"])
        got.backward()
        g_got = (h_s.grad, w_s.grad)
        row = {"loss_naive": float(ref), "loss_chunked": float(got),
               "loss_abs_diff": abs(float(ref) - float(got)), "loss_rel_diff": abs(float(ref) - float(got)) / abs(float(ref))}
        for name, a, b in (("grad_hidden", g_got[0], g_ref[0]), ("grad_lm_head", g_got[1], g_ref[1])):
            d = (a - b).abs().max().item()
            row[f"{name}_max_abs_diff"] = d
            row[f"{name}_max_rel_diff"] = d / b.abs().max().item()
        out[div] = row
    return out


# ----------------------------------------------------------------------------- driver (parent)
def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    return 0.0


def spawn(kind: str, spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, f"--{kind}", json.dumps(spec)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRL_EXPERIMENTAL_SILENCE="1",
               TRANSFORMERS_VERBOSITY="error",
               MALLOC_MMAP_THRESHOLD_="1048576")  # big buffers mmapped: freed memory leaves RSS at once
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        why = "killed (OOM?)" if p.returncode in (-9, 137) else f"exit {p.returncode}"
        return {**spec, "error": f"{why}: {p.stderr.strip()[-300:]}"}
    res = json.loads(lines[-1][len("RESULT "):])
    res["subprocess_wall_s"] = wall
    return res


def fmt_row(r: dict) -> str:
    name = r["method"] if r["method"] == "naive" else f"{r['method']}(c={r['chunk']})"
    head = f"{name:<22}{r['div']:<12}{r['V']:>8}{r['T']:>6}  "
    if "skipped" in r:
        return head + r["skipped"]
    if "error" in r:
        return head + "ERROR " + r["error"][:120]
    return head + f"{r['peak_gib']:>8.3f}  {r['seconds']:>7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--check", help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=256, help="chunk_size of the chunked supports in the main table")
    ap.add_argument("--sweep-chunks", default="", help="extra chunk sizes compared at the largest size (full, reverse KL), e.g. 64,1024")
    ap.add_argument("--topk-divs", default="reverse_kl", help="divergences run for the top-k supports (comma list)")
    ap.add_argument("--naive-cap-gib", type=float, default=12.0)
    ap.add_argument("--threads", type=int, default=1, help="1: with another CPU job beside it, 2 threads oversubscribe 2 cores (30x slower)")
    ap.add_argument("--quick", action="store_true", help="V=32000 and T=1024 only")
    ap.add_argument("--grid", choices=("default", "full"), default="default",
                    help="default: a subset that runs in < 10 min on 2 cores; full: every (method, V, T) (~40 min)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(args.case))), flush=True)
        return
    if args.check:
        print("RESULT " + json.dumps(run_check(json.loads(args.check))), flush=True)
        return

    t_start = time.perf_counter()
    vocabs = VOCABS[:1] if args.quick else VOCABS
    lengths = LENGTHS[:1] if args.quick else LENGTHS
    common = {"H": args.hidden, "threads": args.threads}
    print(f"B=1, H={args.hidden}, float32, threads={args.threads}; machine MemAvailable {available_gib():.1f} GiB", flush=True)

    # correctness first (small enough for both)
    check = spawn("check", {**common, "V": 32000, "T": 256, "chunk": 64}, timeout=300)
    if "error" in check:
        print("correctness check failed:", check["error"])
    else:
        print(f"correctness, full (chunk {check['chunk']}) vs naive ({check['naive_impl']}), V={check['V']} T={check['T']} H={check['H']}:")
        for div in ("reverse_kl", "jsd"):
            c = check[div]
            print(f"  {div:<11} loss {c['loss_chunked']:.6f} vs {c['loss_naive']:.6f} (rel {c['loss_rel_diff']:.1e}); "
                  f"grad hidden max abs {c['grad_hidden_max_abs_diff']:.1e} (rel {c['grad_hidden_max_rel_diff']:.1e}); "
                  f"grad lm_head max abs {c['grad_lm_head_max_abs_diff']:.1e} (rel {c['grad_lm_head_max_rel_diff']:.1e})")

    cases = []
    if args.grid == "full" or args.quick:
        for div in ("reverse_kl", "jsd"):
            for V in vocabs:
                for T in lengths:
                    cases.append({"method": "naive", "div": div, "V": V, "T": T, "chunk": 0})
                    cases.append({"method": "full", "div": div, "V": V, "T": T, "chunk": args.chunk})
        for div in args.topk_divs.split(","):
            for method in ("teacher_topk", "student_topk"):
                for V in vocabs:
                    for T in lengths:
                        cases.append({"method": method, "div": div, "V": V, "T": T, "chunk": args.chunk})
        sweep_at = (vocabs[-1], lengths[-1])
    else:
        # The default grid fits the 10-minute budget of this 2-core CPU (one case costs about
        # 60 ns per T*V element and 10-15 s of start-up): naive vs chunked where naive fits, the
        # chunked alone at the headline size. JSD at V=152k, the chunk sweep and V=128k are in
        # --grid full.
        for div, sizes in (("reverse_kl", ((32000, 1024), (151936, 1024))), ("jsd", ((32000, 1024),))):
            for V, T in sizes:
                cases.append({"method": "naive", "div": div, "V": V, "T": T, "chunk": 0})
                cases.append({"method": "full", "div": div, "V": V, "T": T, "chunk": args.chunk})
        cases.append({"method": "naive", "div": "reverse_kl", "V": 151936, "T": 2048, "chunk": 0})  # skipped by the cap
        for method in ("teacher_topk", "student_topk"):
            cases.append({"method": method, "div": "reverse_kl", "V": 151936, "T": 1024, "chunk": args.chunk})
        sweep_at = (151936, 1024)
    sweep = [{"method": "full", "div": "reverse_kl", "V": sweep_at[0], "T": sweep_at[1], "chunk": int(c)}
             for c in args.sweep_chunks.split(",") if c and int(c) != args.chunk]
    cases[len(cases):] = sweep
    if args.grid == "default" and not args.quick:  # the headline size last (the longest case)
        cases.append({"method": "full", "div": "reverse_kl", "V": 151936, "T": 4096, "chunk": args.chunk})

    bytes_per_elem = {}  # naive: measured peak bytes per T*V element, per divergence
    rows = []
    print(f"\n{'method':<22}{'div':<12}{'V':>8}{'T':>6}  {'peak GiB':>8}  {'time s':>7}", flush=True)
    for spec in cases:
        spec = {**common, **spec}
        if spec["method"] == "naive":
            est = bytes_per_elem.get(spec["div"], 16 * 4) * 1.15 * spec["T"] * spec["V"] / GIB
            avail = available_gib()
            if est > args.naive_cap_gib or est > avail - 3.0:
                r = {**spec, "skipped": f"skipped (est. {est:.1f} GiB; cap {args.naive_cap_gib:g}, available {avail:.1f})", "est_gib": est}
                rows.append(r)
                print(fmt_row(r), flush=True)
                continue
        r = spawn("case", spec, timeout=420)
        if spec["method"] == "naive" and "peak_gib" in r:
            b = r["peak_gib"] * GIB / (spec["T"] * spec["V"])
            bytes_per_elem[spec["div"]] = max(b, bytes_per_elem.get(spec["div"], 0.0)) if spec["div"] in bytes_per_elem else b
        rows.append(r)
        print(fmt_row(r), flush=True)

    # headline
    ok = [r for r in rows if "peak_gib" in r]
    summary = {}
    lines = []
    for div in ("reverse_kl", "jsd"):
        naive = sorted((r for r in ok if r["method"] == "naive" and r["div"] == div), key=lambda r: r["T"] * r["V"])
        full = {(r["V"], r["T"]): r for r in ok if r["method"] == "full" and r["div"] == div and r["chunk"] == args.chunk}
        if not naive:
            continue
        big = naive[-1]
        ch = full.get((big["V"], big["T"]))
        s = {"largest_naive": {"V": big["V"], "T": big["T"], "naive_peak_gib": big["peak_gib"]}}
        if ch:
            s["largest_naive"]["chunked_peak_gib"] = ch["peak_gib"]
            s["largest_naive"]["ratio"] = ch["peak_gib"] / big["peak_gib"]
        Vmax, Tmax = vocabs[-1], lengths[-1]
        at_v = sorted((r for r in naive if r["V"] == Vmax), key=lambda r: r["T"])
        target = full.get((Vmax, Tmax))
        if at_v and target:
            if len(at_v) >= 2:  # linear fit in T through the measured points at this V
                (t1, p1), (t2, p2) = (at_v[0]["T"], at_v[0]["peak_gib"]), (at_v[-1]["T"], at_v[-1]["peak_gib"])
                extrap = p1 + (p2 - p1) * (Tmax - t1) / (t2 - t1)
                how = f"linear in T through T={t1},{t2}"
            else:  # one point: proportional to T (the [T, V] tensors dominate)
                extrap = at_v[0]["peak_gib"] * Tmax / at_v[0]["T"]
                how = f"proportional to T from T={at_v[0]['T']}"
            s["largest"] = {"V": Vmax, "T": Tmax, "chunked_peak_gib": target["peak_gib"], "naive_extrapolated_gib": extrap,
                            "extrapolation": how, "ratio": target["peak_gib"] / extrap}
        summary[div] = s
        line = f"{div}: "
        if ch:
            line += (f"chunked/naive peak at the largest measured naive size (V={big['V']}, T={big['T']}): "
                     f"{ch['peak_gib']:.3f}/{big['peak_gib']:.3f} GiB = {ch['peak_gib'] / big['peak_gib']:.3f}")
        if "largest" in s:
            L = s["largest"]
            line += (f"; at V={Vmax}, T={Tmax}: chunked {L['chunked_peak_gib']:.3f} GiB vs naive EXTRAPOLATED "
                     f"({L['extrapolation']}) {L['naive_extrapolated_gib']:.1f} GiB = {L['ratio']:.3f} (goal <= 0.125)")
        lines.append(line)

    wall = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_full_vocab.json").write_text(json.dumps(
        {"hidden": args.hidden, "chunk": args.chunk, "threads": args.threads, "correctness": check, "rows": rows,
         "summary": summary, "wall_seconds": wall}, indent=1))
    plot(rows, vocabs, args.chunk, out / "memory_full_vocab.png")
    print(f"\nwrote {out / 'memory_full_vocab.json'} and {out / 'memory_full_vocab.png'} ({wall:.0f} s)")
    for line in lines:
        print(line)


def plot(rows, vocabs, chunk, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = dict(zip(vocabs, ("tab:blue", "tab:orange", "tab:green")))
    styles = {"naive": ("-", "o"), "full": ("--", "s"), "teacher_topk": (":", "^"), "student_topk": ("-.", "v")}
    for ax, div in zip(axes, ("reverse_kl", "jsd")):
        for method, (ls, mk) in styles.items():
            for V in vocabs:
                pts = sorted((r["T"], r["peak_gib"]) for r in rows if "peak_gib" in r and r["method"] == method
                             and r["div"] == div and r["V"] == V and (method == "naive" or r["chunk"] == chunk))
                if pts:
                    ax.plot(*zip(*pts), ls=ls, marker=mk, color=colors[V], label=f"{method} V={V}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (B = 1)")
        ax.set_title(f"{div}: forward + backward peak RSS\n(chunked supports at chunk_size {chunk})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("peak memory over baseline (GiB)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
