"""The ``llm_judge`` locator against the expert's labels, with a chat model served by real SGLang.

One command:

    .venv/bin/python bench/agents_judge.py            # builds, trains and serves a tiny judge (minutes)
    .venv/bin/python bench/agents_judge.py --quick    # seconds of judging; plumbing only
    .venv/bin/python bench/agents_judge.py --judge-url http://HOST:PORT/v1/chat/completions --judge-model NAME

1. The episodes are ``bench/agents_locators.py``'s: its weak BC students (built once, cached)
   play the same held-out episodes with the same seeds, and the ``expert`` locator's first
   wrong turn is the label. With the same cached students the labels are that table's.
2. The judge, unless ``--judge-url`` names one: a small Qwen2 (byte-level BPE tokenizer trained
   on judge prompts, ChatML template; ``opdplug.testing.models``) trained briefly
   (``--train-steps``) to answer ``{"first_error": k}`` on judge prompts of the students'
   TRAINING-split episodes with the expert's labels (never the held-out ones), then served by a
   real SGLang server (``opdplug_sglang.server.launch``, CPU engine here). A model this small
   cannot read a grid or a lookup chain from a prompt: expect about the majority label's rate.
3. The locator runs through its public interface (``build_locator("llm_judge", ...)``), one
   request per episode, with ``json_schema`` (constrained decoding: only the episode's student
   turns or null) unless ``--free``.

Reported per environment and over all: the accuracies of ``agents_locators_metrics.score``,
unparseable replies, and the cost per episode: requests, prompt and completion tokens (the
server's ``usage``) and wall seconds. Writes ``runs/bench/agents_judge.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from agents_locators import FULL, QUICK, student_recipe
from agents_locators_metrics import histogram, score

from opdplug.cli import quiet_transformers


def student_episodes(cfg, env: str, quick: bool, split: str, tag: str, n: int) -> dict:
    """Per horizon, the weak student's episodes of ``split`` (``tag`` "agents-locators" with split
    "eval": exactly ``bench/agents_locators.py``'s) and the tokenizer."""
    from opdplug_agents import recipe as recipes
    from opdplug_agents.rollout import ModelActor, run_episodes
    from opdplug_agents.task import AgentTask

    from opdplug.context import derive_seed
    from opdplug_local import models as local

    student_dir = recipes.train_teacher(student_recipe(cfg, env, quick), verbose=False)
    tokenizer = local.load_tokenizer(str(student_dir))
    student = local.load_model(str(student_dir), "student")
    book = recipes.QUICK if quick else recipes.RECIPES
    groups = {}
    for h in cfg.horizons:
        task = AgentTask(tokenizer, env=env, min_horizon=h, max_horizon=h, env_options=dict(book[env].env_options))
        prompts = task.prompts(n, seed=derive_seed(cfg.seed, tag, env, h), split=split, length=h)
        with torch.no_grad():
            groups[h] = run_episodes(
                [(p.meta["env"], p.meta["seed"], p.meta["options"]) for p in prompts], ModelActor(student, "student"),
                tokenizer, max_action_tokens=task.max_new_tokens(h), temperature=cfg.temperature,
                generator=torch.Generator().manual_seed(derive_seed(cfg.seed, f"{tag}-draws", env, h)),
            )
    return {"tokenizer": tokenizer, "groups": groups}


def expert_labels(episodes, tokenizer) -> list:
    from opdplug_agents.locators import LocatorDeps, build_locator

    return build_locator("expert", {}).locate(episodes, LocatorDeps(tokenizer=tokenizer))


def train_judge(directory: Path, examples: list, steps: int, seed: int = 0, lr: float = 3e-3, batch: int = 8) -> dict:
    """Build the judge (tokenizer trained on the prompts) and train it ``steps`` steps on
    ``examples`` (``(messages, label)``): loss on the assistant reply only."""
    from opdplug.testing.models import build_bpe_tokenizer, build_model, save_model_dir

    texts = [m["content"] for messages, _ in examples for m in messages]
    tok = build_bpe_tokenizer(texts[:2000], vocab_size=1024, model_max_length=4096)
    model = build_model("qwen2", tok, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=4096, seed=seed)
    rows = []
    for messages, label in examples:
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        reply = tok.encode(json.dumps({"first_error": label}), add_special_tokens=False) + [tok.eos_token_id]
        rows.append((list(prompt), reply))
    rng, model, losses = random.Random(seed), model.train(), []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(steps):
        picked = [rows[rng.randrange(len(rows))] for _ in range(batch)]
        L = max(len(p) + len(r) for p, r in picked)
        ids = torch.zeros(batch, L, dtype=torch.long)
        labels = torch.full((batch, L), -100, dtype=torch.long)
        mask = torch.zeros(batch, L, dtype=torch.long)
        for b, (p, r) in enumerate(picked):
            ids[b, :len(p) + len(r)] = torch.tensor(p + r)
            labels[b, len(p):len(p) + len(r)] = torch.tensor(r)
            mask[b, :len(p) + len(r)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save_model_dir(model.eval(), tok, directory)
    return {"steps": steps, "examples": len(rows), "seconds": time.perf_counter() - t0,
            "loss_first": losses[0] if losses else None, "loss_last_20": sum(losses[-20:]) / max(len(losses[-20:]), 1),
            "mean_prompt_tokens": sum(len(p) for p, _ in rows) / max(len(rows), 1),
            "parameters": sum(p.numel() for p in model.parameters())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="plumbing only: QUICK students, 4 episodes per group")
    parser.add_argument("--n", type=int, help="held-out episodes per environment and horizon (default: agents_locators')")
    parser.add_argument("--envs", default="gridnav,calc_lookup")
    parser.add_argument("--judge-url", help="an OpenAI-compatible /v1/chat/completions URL (default: serve a tiny judge)")
    parser.add_argument("--judge-model", default="default", help="the request's model field")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the tiny judge (0: random weights)")
    parser.add_argument("--train-n", type=int, default=96, help="training-split episodes per environment and horizon")
    parser.add_argument("--free", action="store_true", help="no JSON schema: the judge writes free text")
    parser.add_argument("--output-dir", default="runs/bench")
    args = parser.parse_args(argv)
    if args.judge_url and not args.judge_url.startswith(("http://", "https://")):
        raise SystemExit(f"agents_judge: --judge-url must start with http:// or https://, got {args.judge_url!r}")
    cfg = QUICK if args.quick else FULL
    if args.quick:
        args.train_steps = min(args.train_steps, 20)
    cfg = dataclasses.replace(cfg, envs=tuple(e for e in args.envs.split(",") if e), n=args.n or cfg.n)
    unknown = [e for e in cfg.envs if e not in FULL.student_steps]
    if unknown:
        raise SystemExit(f"agents_judge: --envs: no weak student recipe for {', '.join(unknown)}; "
                         f"known: {', '.join(FULL.student_steps)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    quiet_transformers()
    try:
        return _run(cfg, args)
    finally:
        torch.set_num_threads(threads)


def _run(cfg, args) -> dict:
    from opdplug_agents.locators import JudgeUnreachable, LocatorDeps, build_locator, judge_messages

    t0 = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    held, train = {}, []
    for env in cfg.envs:
        held[env] = student_episodes(cfg, env, args.quick, "eval", "agents-locators", cfg.n)
        if not args.judge_url and args.train_steps > 0:
            tr = student_episodes(cfg, env, args.quick, "train", "agents-judge-train", 8 if args.quick else args.train_n)
            for episodes in tr["groups"].values():
                train += [(judge_messages(e), k) for e, k in zip(episodes, expert_labels(episodes, tr["tokenizer"]))]
    results: dict = {"config": {**dataclasses.asdict(cfg), "json_schema": not args.free, "train_steps": args.train_steps},
                     "quick": bool(args.quick), "judge": {}, "by_env_horizon": {}, "by_env": {}}
    server = None
    try:
        if args.judge_url:
            url, results["judge"] = args.judge_url, {"url": args.judge_url, "model": args.judge_model}
        else:
            from opdplug_sglang.server import launch

            directory = out / "agents_judge_model"
            if args.train_steps > 0:
                results["judge"]["training"] = train_judge(directory, train, args.train_steps)
            else:
                from opdplug.testing.models import build_bpe_tokenizer, build_model_dir

                build_model_dir(directory, "qwen2", build_bpe_tokenizer(vocab_size=1024, model_max_length=4096),
                                hidden_size=96, max_position_embeddings=4096)
            t1 = time.perf_counter()
            server = launch(directory, extra_args=["--disable-radix-cache"], timeout_s=600)
            url = server.url + "/v1/chat/completions"
            results["judge"].update(url=url, model=args.judge_model, served_by="sglang (CPU engine)",
                                    start_seconds=time.perf_counter() - t1, dir=str(directory))
        locator = build_locator("llm_judge", {"url": url, "model": args.judge_model, "json_schema": not args.free,
                                              "max_tokens": 16})
        preds, labels, stats, seconds = {}, {}, Counter(), Counter()
        for env in cfg.envs:
            tokenizer = held[env]["tokenizer"]
            for h, episodes in held[env]["groups"].items():
                key = f"{env} h={h}"
                labels[key] = expert_labels(episodes, tokenizer)
                deps = LocatorDeps(tokenizer=tokenizer)
                t1 = time.perf_counter()
                try:
                    preds[key] = locator.locate(episodes, deps)
                except JudgeUnreachable as exc:
                    raise SystemExit(f"agents_judge: {exc}") from None
                seconds[key] = time.perf_counter() - t1
                stats[key] = deps.stats
                results["by_env_horizon"][key] = {**score(preds[key], labels[key]), **_cost(deps.stats, len(episodes), seconds[key]),
                                                  "labels": histogram(labels[key]), "judged": histogram(preds[key])}
    finally:
        if server is not None:
            results["judge"]["log"] = str(server.log_path)
            server.stop()
    def pooled(keys):
        total = sum((Counter(stats[k]) for k in keys), Counter())
        got, want = [p for k in keys for p in preds[k]], [y for k in keys for y in labels[k]]
        return {**score(got, want), **_cost(total, len(want), sum(seconds[k] for k in keys)),
                "labels": histogram(want), "judged": histogram(got)}

    results["by_env"] = {env: pooled([k for k in preds if k.startswith(env + " ")]) for env in cfg.envs}
    results["all"] = pooled(list(preds))
    # what always answering the commonest label would score (the bar a judge that learned nothing reaches)
    every = [y for k in labels for y in labels[k]]
    common = Counter(every).most_common(1)[0][0]
    results["majority_label"] = {"label": common, "exact": every.count(common) / len(every)}
    results["wall_seconds"] = time.perf_counter() - t0
    lines = report(results, cfg)
    print("\n".join(lines))
    (out / "agents_judge.json").write_text(json.dumps(results, indent=1, default=list))
    return results


def _cost(stats, n: int, seconds: float) -> dict:
    return {"requests": stats.get("judge_calls", 0), "unparseable": stats.get("judge_failures", 0),
            "prompt_tokens_per_episode": stats.get("judge_prompt_tokens", 0) / max(n, 1),
            "completion_tokens_per_episode": stats.get("judge_completion_tokens", 0) / max(n, 1),
            "requests_per_episode": stats.get("judge_calls", 0) / max(n, 1), "seconds": seconds,
            "seconds_per_episode": seconds / max(n, 1)}


def report(results: dict, cfg) -> list[str]:
    """The printed table; its last line is the headline."""
    def f(x):
        return "  -  " if x is None else f"{x:5.2f}"

    judge = results["judge"]
    lines = [f"judge: {judge.get('model')} at {judge.get('url')}"
             + (f"; trained {judge['training']['steps']} steps on {judge['training']['examples']} training-split "
                f"episodes (loss {judge['training']['loss_first']:.2f} -> {judge['training']['loss_last_20']:.3f}, "
                f"{judge['training']['parameters'] / 1e6:.2f}M parameters)" if "training" in judge else ""), ""]
    head = (f"{'scope':<18} {'n':>4} {'exact':>5} {'+-1':>5} | {'early':>5} {'late':>5} {'miss':>5} | {'f.a.':>5} | "
            f"{'unparseable':>11} {'req/ep':>6} {'prompt tok/ep':>13} {'reply tok/ep':>12} {'s/ep':>6}")
    lines += [head, "-" * len(head)]
    rows = [*results["by_env_horizon"].items(), *results["by_env"].items(), ("all", results["all"])]
    for name, r in rows:
        lines.append(f"{name:<18} {r['n']:>4} {f(r['exact'])} {f(r['within_one'])} | {f(r['early'])} {f(r['late'])} "
                     f"{f(r['missed'])} | {f(r['false_alarm'])} | {r['unparseable']:>11} {r['requests_per_episode']:>6.2f} "
                     f"{r['prompt_tokens_per_episode']:>13.1f} {r['completion_tokens_per_episode']:>12.1f} {r['seconds_per_episode']:>6.3f}")
    a, m = results["all"], results["majority_label"]
    lines += ["", f"headline: llm_judge exact-step accuracy {a['exact']:.2f} (within one step {a['within_one']:.2f}) vs "
              f"expert labels over {a['n']} episodes ({a['n_error']} with an error); always answering the commonest "
              f"label ({m['label']}) scores {m['exact']:.2f}; {a['unparseable']} unparseable replies; cost per episode "
              f"{a['requests_per_episode']:.0f} request, {a['prompt_tokens_per_episode']:.0f} prompt + "
              f"{a['completion_tokens_per_episode']:.1f} reply tokens, {a['seconds_per_episode']:.3f} s  "
              f"[{results['wall_seconds']:.0f} s]"]
    return lines


if __name__ == "__main__":
    main()
