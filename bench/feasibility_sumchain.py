"""Feasibility check: how fast do the tiny sizes learn SumChain from reference completions on CPU?

Trains a model of a given size from scratch with plain next-token cross-entropy on the completion
tokens of SumChain references (teacher forcing, AdamW, linear warmup then cosine decay), and
every ``--eval-every`` steps measures greedy accuracy (``SumChain.verify``) on held-out eval-split
prompts at every length. Prints a table and the first step/time at which the overall accuracy
passes ``--target``. Not a test: it takes minutes.

    .venv/bin/python bench/feasibility_sumchain.py --size teacher
    .venv/bin/python bench/feasibility_sumchain.py --size student --steps 800

Recipe found (defaults of this script): SumChain lengths 2..8 with ``echo_digits`` (steps written
``label digit sum``), batch 64, AdamW(lr 1e-3, betas 0.9/0.98, wd 0.01), 50 warmup steps then
cosine to 10%, grad-norm clip 1.0, 500 steps. Measured on the 2-core CPU, 2 threads:
  teacher (2x128, 0.53M): >90% at step 250 (40 s), 100% at T=2..8 from step 400; 500 steps 73 s.
  student (2x64, 0.14M):  >90% at step 350 (28 s), 100% from step 400; ~85 ms/step.
  Neither extrapolates: T >= 9 (labels never seen in a completion) stays at chance.
What did not work: lr 3e-3 sits on a plateau (sum tokens at ~1.8 nats) for 700+ steps and
escapes or not depending on the seed; the terse ``label sum`` format is at 49% after 500 steps.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from opdplug_local import tiny  # noqa: E402
from opdplug_local.sampling import sample  # noqa: E402
from opdplug_local.tasks import SumChain  # noqa: E402


def make_batch(prompts, pad_id: int):
    """Right-padded ``(input_ids_B_L, attention_mask_B_L, loss_mask_B_L)`` of prompt + reference."""
    seqs = [list(p.prompt_ids) + list(p.reference_ids) for p in prompts]
    L = max(map(len, seqs))
    ids_B_L = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attn_B_L = torch.zeros((len(seqs), L), dtype=torch.long)
    loss_B_L = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, (p, s) in enumerate(zip(prompts, seqs)):
        ids_B_L[b, : len(s)] = torch.tensor(s)
        attn_B_L[b, : len(s)] = 1
        loss_B_L[b, len(p.prompt_ids): len(s)] = 1  # completion tokens only, EOS included
    return ids_B_L, attn_B_L, loss_B_L


ROLES = ("label", "digit", "sum", "tail")


def role_ids(task: SumChain, prompts, L: int) -> torch.Tensor:
    """Role of each target token (index into ROLES, -1 outside completions), ``[B, L]``."""
    per_step = ("label", "digit", "sum") if task.options.echo_digits else ("label", "sum")
    out_B_L = torch.full((len(prompts), L), -1, dtype=torch.long)
    for b, p in enumerate(prompts):
        T = p.meta["length"]
        roles = [ROLES.index(r) for _ in range(T) for r in per_step] + [3, 3, 3]
        P = len(p.prompt_ids)
        out_B_L[b, P:P + len(roles)] = torch.tensor(roles)
    return out_B_L


def completion_loss(model, ids_B_L, attn_B_L, loss_B_L, roles_B_L=None):
    """Mean next-token cross-entropy over completion tokens, and the mean per role (no grad)."""
    logits_B_L_V = model(input_ids=ids_B_L, attention_mask=attn_B_L).logits
    logp_B_L1_V = torch.log_softmax(logits_B_L_V[:, :-1].float(), -1)
    nll_B_L1 = -logp_B_L1_V.gather(-1, ids_B_L[:, 1:, None]).squeeze(-1)
    mask_B_L1 = loss_B_L[:, 1:].float()
    by_role = {}
    if roles_B_L is not None:
        for i, r in enumerate(ROLES):
            sel_B_L1 = roles_B_L[:, 1:] == i
            if sel_B_L1.any():
                by_role[r] = nll_B_L1.detach()[sel_B_L1].mean().item()
    return (nll_B_L1 * mask_B_L1).sum() / mask_B_L1.sum(), by_role


def greedy_accuracy(model, task: SumChain, eval_sets: dict[int, list]) -> dict[int, float]:
    """Greedy accuracy per length on fixed eval-split prompts."""
    tok = task.tokenizer
    acc = {}
    was_training = model.training
    model.eval()
    for length, prompts in eval_sets.items():
        res = sample(
            model, [list(p.prompt_ids) for p in prompts],
            max_new_tokens=task.max_new_tokens(length), temperature=0.0,
            eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=None,
        )
        comps = res.completions()
        acc[length] = sum(task.verify(p, c) for p, c in zip(prompts, comps)) / len(prompts)
    model.train(was_training)
    return acc


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup for ``warmup`` steps, then cosine decay to 10% of ``lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="teacher", help="a key of opdplug_local.tiny.SIZES")
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers of --size")
    ap.add_argument("--hidden", type=int, default=None, help="override hidden_size of --size")
    ap.add_argument("--init-range", type=float, default=None, help="override initializer_range (0.02)")
    ap.add_argument("--steps", type=int, default=500, help="schedule length (cosine horizon)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--min-len", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=8)
    ap.add_argument("--echo-digits", action=argparse.BooleanOptionalAction, default=True,
                    help="SumChainOptions.echo_digits: steps written as 'label digit sum'")
    ap.add_argument("--eval-max-len", type=int, default=None,
                    help="evaluate lengths up to this (default --max-len); longer = extrapolation")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-n", type=int, default=64, help="eval prompts per length")
    ap.add_argument("--target", type=float, default=0.9, help="overall greedy accuracy to reach")
    ap.add_argument("--stop-at-target", action="store_true", help="stop when the target is hit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", default=None, help="folder to save the trained model into")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    task = SumChain(min_len=args.min_len, max_len=args.max_len, echo_digits=args.echo_digits)
    tok = task.tokenizer
    size = dict(tiny.SIZES[args.size])
    if args.layers is not None:
        size["num_hidden_layers"] = args.layers
    if args.hidden is not None:
        size["hidden_size"] = args.hidden
        size["intermediate_size"] = 4 * args.hidden
    if args.init_range is not None:
        size["initializer_range"] = args.init_range
    model = tiny.build_model(size, tok, seed=args.seed)
    model.train()
    n_params = tiny.count_parameters(model)
    print(f"size={args.size} {size} params={n_params:,} train_flops/token={tiny.flops_per_token(model, True):,} "
          f"steps={args.steps} batch={args.batch} lr={args.lr} warmup={args.warmup} "
          f"lengths={args.min_len}..{args.max_len} echo_digits={args.echo_digits} threads={args.threads}", flush=True)
    lengths = list(range(args.min_len, (args.eval_max_len or args.max_len) + 1))
    eval_sets = {t: task.prompts(args.eval_n, seed=10_000, split="eval", length=t) for t in lengths}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.98))

    train_time = 0.0  # optimizer steps only; evaluation time is reported apart
    eval_time = 0.0
    hit = None
    for step in range(args.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        prompts = task.prompts(args.batch, seed=args.seed * 1_000_003 + step, split="train")
        batch = make_batch(prompts, tok.pad_token_id)
        loss, by_role = completion_loss(model, *batch, role_ids(task, prompts, batch[0].shape[1]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_time += time.perf_counter() - t0
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            t1 = time.perf_counter()
            acc = greedy_accuracy(model, task, eval_sets)
            eval_time += time.perf_counter() - t1
            trained = [a for t, a in acc.items() if t <= args.max_len]
            overall = sum(trained) / len(trained)  # the target is on trained lengths only
            per = " ".join(f"T{t}={a:.2f}" for t, a in acc.items())
            print(f"step {step + 1:5d}  train {train_time:6.1f}s  eval {eval_time:5.1f}s  "
                  f"loss {loss.item():.4f} ("
                  + " ".join(f"{r} {v:.2f}" for r, v in by_role.items())
                  + f")  acc {overall:.3f}  {per}", flush=True)
            if hit is None and overall > args.target:
                hit = (step + 1, train_time, acc)
                if args.stop_at_target:
                    break
    print(f"train time {train_time:.1f}s ({1000 * train_time / (step + 1):.0f} ms/step), "
          f"eval time {eval_time:.1f}s")
    if hit:
        print(f"RESULT size={args.size}: overall greedy acc > {args.target} at step {hit[0]} "
              f"after {hit[1]:.1f}s of training; at that point "
              + " ".join(f"T{t}={a:.2f}" for t, a in hit[2].items()))
    else:
        print(f"RESULT size={args.size}: target {args.target} not reached in {args.steps} steps")
    if args.save:
        tiny.save_pretrained_pair(model, tok, args.save)


if __name__ == "__main__":
    main()
