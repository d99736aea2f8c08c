"""SGLang against the embedded default, on the same work, side by side in one run.

1. Scoring: teacher log-probs (sampled token + top-k) of the same batch of sequences, by the
   ``sglang`` scorer's path (``SGLangTarget.score`` over HTTP to a real SGLang server) and by the
   local Hugging Face teacher (``score_with_model``, opdplug's embedded scorer). Tokens/s.
2. Rollouts: student completions of the same prompts (T = 1, same budget) by SGLang
   (``/generate``, as the ``sglang`` sampler sends it), by Hugging Face ``generate`` (with the
   per-token scores a trainer needs), and by opdplug's own KV-cache sampler. Tokens/s.

The two timed paths alternate, ``--reps`` times; medians and the spread are reported. The server
gets ``--threads`` CPU threads and so does this process, so neither has more of the machine.
Needs the SGLang environment (``make sglang-env``).

    .venv/bin/python bench/sglang_throughput.py            # about 3 minutes on 2 CPU cores
Writes runs/bench/sglang_throughput.json; the last printed line is the headline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEACHER = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=1024)
STUDENT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32, help="sequences per scoring batch / prompts per rollout batch")
    ap.add_argument("--new-tokens", type=int, default=48, help="completion length (scoring) / budget (rollouts)")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "sglang_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from opdplug_local import tiny
    from opdplug_local.models import collate, model_rollout, score_with_model
    from opdplug_local.tasks import SumChain
    from opdplug.types import PRODUCER_STUDENT, Prompt
    from opdplug_sglang.client import SGLangClient
    from opdplug_sglang.protocol import answers_of, batch_payload, parse_sample, sampling_payload
    from opdplug_sglang.server import launch
    from opdplug_sglang.target import SGLangTarget

    work = Path(tempfile.mkdtemp(prefix="opd-sglang-bench-"))
    tok = tiny.build_tokenizer(SumChain().words())
    teacher = tiny.build_model(TEACHER, tok, seed=1).eval()
    student = tiny.build_model(STUDENT, tok, seed=2).eval()
    tiny.save_pretrained_pair(teacher, tok, work / "teacher")
    tiny.save_pretrained_pair(student, tok, work / "student")
    task = SumChain(tokenizer=tok)
    prompts = task.prompts(args.batch, seed=0, split="train")
    g = torch.Generator().manual_seed(0)
    completions = [torch.randint(4, len(tok), (args.new_tokens,), generator=g).tolist() for _ in prompts]
    batch = collate(prompts, completions, producer=PRODUCER_STUDENT, pad_id=tok.pad_token_id)
    rows = [list(p.prompt_ids) + c for p, c in zip(prompts, completions)]
    starts = [len(p.prompt_ids) for p in prompts]
    n_scored = sum(len(c) for c in completions)
    results: dict = {"config": vars(args), "teacher": TEACHER, "student": STUDENT}

    print(f"starting SGLang for the teacher and the student ({args.threads} thread(s) each) ...", flush=True)
    extra = ["--disable-radix-cache"]  # every rep pays for its full prompt, as new data would
    with launch(work / "teacher", extra_args=extra, threads=args.threads, timeout_s=600) as t_srv, \
         launch(work / "student", extra_args=extra, threads=args.threads, timeout_s=600) as s_srv:
        target = SGLangTarget(SGLangClient([t_srv.url], max_concurrency=1), batch_size=args.batch, vocab_size=len(tok))
        target.score(rows[:2], starts[:2], top_k=args.top_k)  # warm-up
        score_with_model(teacher, batch, temperature=1.0, top_k=args.top_k)
        local_s, served_s = [], []
        for rep in range(args.reps):
            order = [("local", lambda: score_with_model(teacher, batch, temperature=1.0, top_k=args.top_k)),
                     ("sglang", lambda: target.score(rows, starts, top_k=args.top_k))]
            for name, fn in (order if rep % 2 == 0 else order[::-1]):
                dt, out = timed(fn)
                (local_s if name == "local" else served_s).append(dt)
        check = target.score(rows[:4], starts[:4], top_k=args.top_k)
        dense = score_with_model(teacher, batch.select(torch.arange(4)), temperature=1.0, top_k=args.top_k)
        gap = max(float((s.token_logprobs_T - dense.token_logprobs_B_L[i, starts[i]:starts[i] + len(completions[i])]).abs().max())
                  for i, s in enumerate(check))
        results["scoring"] = {
            "tokens": n_scored, "local_s": summary(local_s), "sglang_s": summary(served_s),
            "local_tok_s": n_scored / statistics.median(local_s), "sglang_tok_s": n_scored / statistics.median(served_s),
            "max_abs_logprob_gap": gap,
        }

        client = SGLangClient([s_srv.url], max_concurrency=1)
        eos = tok.eos_token_id

        def sglang_rollout():
            payload = batch_payload([sampling_payload(p.prompt_ids, max_new_tokens=args.new_tokens, temperature=1.0,
                                                      top_p=1.0, eos_id=eos) for p in prompts])
            return [parse_sample(a, max_new_tokens=args.new_tokens, eos_id=eos) for a in answers_of(client.post("/generate", payload), len(prompts))]

        def hf_generate():
            ids = [list(p.prompt_ids) for p in prompts]
            L = max(map(len, ids))
            inp = torch.tensor([[tok.pad_token_id] * (L - len(r)) + r for r in ids])  # left-padded for generate
            mask = (torch.arange(L)[None] >= torch.tensor([L - len(r) for r in ids])[:, None]).long()
            with torch.no_grad():
                out = student.generate(inp, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                       max_new_tokens=args.new_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                                       output_scores=True, return_dict_in_generate=True)
            gen = out.sequences[:, L:]
            return sum(int((row != tok.pad_token_id).sum()) for row in gen)

        def opdplug_sampler():
            b = model_rollout(student, prompts, producer=PRODUCER_STUDENT, max_new_tokens=args.new_tokens, temperature=1.0,
                              top_p=1.0, tokenizer=tok, generator=torch.Generator().manual_seed(1), on_policy=True)
            return b.num_loss_tokens

        sglang_rollout(), hf_generate(), opdplug_sampler()  # warm-up
        times = {"sglang": [], "hf_generate": [], "opdplug": []}
        tokens = {"sglang": [], "hf_generate": [], "opdplug": []}
        names = list(times)
        for rep in range(args.reps):
            for name in names[rep % 3:] + names[: rep % 3]:
                fn = {"sglang": lambda: sum(len(s.ids) for s in sglang_rollout()), "hf_generate": hf_generate,
                      "opdplug": opdplug_sampler}[name]
                dt, n = timed(fn)
                times[name].append(dt)
                tokens[name].append(n)
        results["rollout"] = {
            name: {"s": summary(times[name]), "tokens_per_batch": statistics.median(tokens[name]),
                   "tok_s": statistics.median([n / t for n, t in zip(tokens[name], times[name])])}
            for name in names
        }

    sc, ro = results["scoring"], results["rollout"]
    print(f"\n{'what':<34}{'tokens/s':>12}{'median s':>10}{'min':>8}{'max':>8}")
    print(f"{'scoring: local HF teacher':<34}{sc['local_tok_s']:>12.0f}{sc['local_s']['median']:>10.3f}{sc['local_s']['min']:>8.3f}{sc['local_s']['max']:>8.3f}")
    print(f"{'scoring: SGLang teacher (HTTP)':<34}{sc['sglang_tok_s']:>12.0f}{sc['sglang_s']['median']:>10.3f}{sc['sglang_s']['min']:>8.3f}{sc['sglang_s']['max']:>8.3f}")
    for name, label in (("hf_generate", "rollout: HF generate"), ("opdplug", "rollout: opdplug sampler"), ("sglang", "rollout: SGLang /generate")):
        r = ro[name]
        print(f"{label:<34}{r['tok_s']:>12.0f}{r['s']['median']:>10.3f}{r['s']['min']:>8.3f}{r['s']['max']:>8.3f}")
    print(f"scoring agreement: max |SGLang - local| log-prob = {sc['max_abs_logprob_gap']:.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"SGLang scoring {sc['sglang_tok_s'] / sc['local_tok_s']:.2f}x the local teacher's tokens/s; "
          f"SGLang rollouts {ro['sglang']['tok_s'] / ro['hf_generate']['tok_s']:.2f}x HF generate's "
          f"({ro['opdplug']['tok_s'] / ro['hf_generate']['tok_s']:.2f}x for opdplug's sampler)")


if __name__ == "__main__":
    sys.exit(main())
