"""What the three systems of ``vs_trl.py`` share: the settings of each size, the models they start
from (``prepare``), the task and its per-step prompts, and the evaluation every final student gets.

Two sizes (``--size``):

* ``tiny``: the demo's SumChain teacher (533k parameters) and cold-started student (135k), a
  30-word vocabulary; Python overhead is the whole story there.
* ``realistic``: ``vs_trl_realistic``'s ~22M student and ~88M teacher, a 16k byte-level BPE
  vocabulary, few-shot word problems from the ``dataset`` task (prompt + completion >= 140 tokens).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BETA = {"reverse_kl": 1.0, "jsd": 0.5}
LENGTHS = (2, 8)  # SumChain min_len, max_len (the demo's)
THREADS = 1  # per worker; 1 keeps timings stable when other jobs share the 2 cores
SYSTEMS = ("opdplug", "trl", "distill")  # "trl" is GKD (the key of earlier results)
LABELS = {"opdplug": "opdplug", "trl": "TRL GKD", "distill": "TRL Distillation"}


@dataclass(frozen=True)
class Size:
    """Defaults of one size; every one can be overridden on the command line."""

    steps: int
    batch: int
    max_new_tokens: int
    lr: float
    reps: int
    skip: int
    eval_prompts: int
    profile_steps: int


SIZES = {
    # lr 1e-3 made the reverse KL rise in every system on 2026-12-04 (2.18 -> 2.26-2.37): the
    # cold-started student is already close to the teacher's modes and large steps overshoot.
    "tiny": Size(steps=40, batch=8, max_new_tokens=27, lr=2e-4, reps=7, skip=3, eval_prompts=256, profile_steps=10),
    "realistic": Size(steps=12, batch=4, max_new_tokens=24, lr=3e-4, reps=3, skip=2, eval_prompts=32, profile_steps=0),
}


def make_task(size: str, tok):
    """The task the prompts come from: SumChain (tiny) or the dataset task (realistic)."""
    if size == "tiny":
        from opdplug_local.tasks import SumChain

        return SumChain(tokenizer=tok, min_len=LENGTHS[0], max_len=LENGTHS[1])
    from opdplug_local.dataset_task import DatasetOptions, DatasetTask

    import vs_trl_realistic

    options = dict(vs_trl_realistic.task_options())
    options.pop("verifier")  # needs the plugin registry; evaluation checks answers itself
    return DatasetTask(tok, DatasetOptions(**options))


def task_section(size: str) -> dict:
    """The ``[task]`` table of opdplug's config for ``size`` (None: the demo's SumChain)."""
    if size == "tiny":
        return {}
    import vs_trl_realistic

    return {"task": {"name": "dataset", "options": vs_trl_realistic.task_options()}}


def all_step_prompts(task, seed: int, steps: int, batch: int) -> list:
    """opdplug's prompts of every step (micro-batch 0, process 0): what loop.train_step draws,
    from a stream position for a dataset task or from a per-step seed for a generator task."""
    from opdplug.context import derive_seed

    if hasattr(task, "take"):
        out, position = [], 0
        for _ in range(steps):
            prompts, position = task.take(position, batch, seed=seed)
            out.append(prompts)
        return out
    return [task.prompts(batch, seed=derive_seed(seed, "prompts", s, 0, 0), split="train") for s in range(steps)]


def pad_id_of(tok) -> int:
    """The pad id TRL needs (a BPE tokenizer built like a Llama-family one declares none)."""
    if tok.pad_token_id is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    return tok.pad_token_id


def positions(attention_mask_B_L):
    """Position ids counting only attended tokens (what the local backend's sampler uses)."""
    return (attention_mask_B_L.cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------- evaluation
def evaluate(model_dir: str, teacher_dir: str, max_new_tokens: int, size: str = "tiny", n: int = 256) -> dict:
    """Same for every system: full-vocab reverse KL(student || teacher) per completion token on
    fixed student rollouts (seeded, T = 1) of ``n`` held-out prompts, and greedy accuracy."""
    import torch

    from opdplug_local import models as local, sampling
    from opdplug_local.evaluate import accuracy_by_length

    student = local.load_model(model_dir, "student").eval()
    teacher = local.load_model(teacher_dir, "teacher").eval()
    tok = local.load_tokenizer(model_dir)
    task = make_task(size, tok)
    prompts = task.prompts(n, seed=4242, split="eval")
    eos = list(task.end_ids) if size != "tiny" else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    gen = torch.Generator().manual_seed(0)
    kl_sum, tokens, correct = 0.0, 0, 0
    step = 64 if size == "tiny" else 8
    with torch.no_grad():
        for i in range(0, len(prompts), step):
            chunk = prompts[i:i + step]
            out = sampling.sample(student, [list(p.prompt_ids) for p in chunk], max_new_tokens=max_new_tokens,
                                  temperature=1.0, eos_id=eos, pad_id=pad, generator=gen)
            ids, attn = out.input_ids_B_L, out.attention_mask_B_L
            pos = positions(attn)
            ls = torch.log_softmax(student(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float(), -1)
            lt = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float(), -1)
            kl_B_L = (ls.exp() * (ls - lt)).sum(-1)[:, :-1]  # position t-1 predicts token t
            mask = out.completion_mask_B_L[:, 1:].bool()
            kl_sum += float(kl_B_L[mask].sum())
            tokens += int(mask.sum())
            if size != "tiny":  # greedy answers of the same prompts, checked by the task
                g = sampling.sample(student, [list(p.prompt_ids) for p in chunk], max_new_tokens=max_new_tokens,
                                    temperature=0.0, eos_id=eos, pad_id=pad)
                for b, p in enumerate(chunk):
                    row = g.input_ids_B_L[b][g.completion_mask_B_L[b].bool()].tolist()
                    correct += _final_number(tok, p, row)
    out = {"reverse_kl": kl_sum / max(tokens, 1), "eval_tokens": tokens, "eval_prompts": len(prompts)}
    if size == "tiny":
        acc = accuracy_by_length(student, tok, task, list(range(LENGTHS[0], LENGTHS[1] + 1)), n=50)
        out.update(greedy_accuracy=sum(acc.values()) / len(acc), accuracy_by_T={str(k): v for k, v in acc.items()})
    else:
        out["greedy_accuracy"] = correct / max(len(prompts), 1)
    return out


def _final_number(tok, prompt, completion_ids) -> bool:
    """Whether the completion's last number is the prompt's reference answer."""
    import re

    nums = re.findall(r"-?\d+", tok.decode(completion_ids, skip_special_tokens=True))
    return bool(nums) and nums[-1] == str(prompt.meta.get("answer", "")).strip()


def prepare(out_dir: Path, size: str = "tiny") -> tuple[str, str]:
    """(teacher dir, student dir) of ``size``. Tiny: the cached demo teacher and a private copy of
    the demo's cold-started student (made here with a short off-policy cold start if ``make demo``
    has not left one). Realistic: ``vs_trl_realistic.prepare`` (built once, cached)."""
    if size == "realistic":
        import vs_trl_realistic

        return vs_trl_realistic.prepare(out_dir)
    from opdplug_local.demo import DemoRecipe, demo_config, train_teacher

    teacher = str(train_teacher(DemoRecipe()))
    student = out_dir / "student_cold_start"
    if not (student / "config.json").is_file():
        src = ROOT / "runs" / "demo" / "cold_start" / "final"
        if (src / "config.json").is_file():  # what `make demo` leaves (its 250-step cold start)
            shutil.copytree(src, student, dirs_exist_ok=True)
        else:
            from opdplug.loop import train

            config, manager = demo_config(
                DemoRecipe(), out_dir / "cold_start_run",
                run={"steps": DemoRecipe().cold_start_steps, "batch_size": 32, "lr": 1e-3},
                student={"tiny": "student", "init_seed": 2},
                teacher={"path": teacher, "scorer": "none"},
                rollout={"sampler": "teacher", "temperature": 1.0},
                loss={"support": "sampled", "estimator": "nll"},
            )
            res = train(config, manager, progress_desc="student cold start")
            shutil.copytree(res.final_model_dir, student, dirs_exist_ok=True)
    return teacher, str(student)
