"""What the three systems of ``vs_trl.py`` share: the settings, the models they start from (the
demo's teacher and cold-started student, ``prepare``), opdplug's per-step prompts, and the
evaluation every final student gets."""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BETA = {"reverse_kl": 1.0, "jsd": 0.5}
LENGTHS = (2, 8)  # SumChain min_len, max_len (the demo's)
THREADS = 1  # per worker; 1 keeps timings stable when other jobs share the 2 cores
SYSTEMS = ("opdplug", "trl", "distill")  # "trl" is GKD (the key of earlier results)
LABELS = {"opdplug": "opdplug", "trl": "TRL GKD", "distill": "TRL Distillation"}


def step_prompts(task, seed: int, step: int, batch: int):
    """opdplug's prompts for ``step`` (micro-batch 0, process 0): what loop.train_step draws."""
    from opdplug.context import derive_seed

    return task.prompts(batch, seed=derive_seed(seed, "prompts", step, 0, 0), split="train")


def positions(attention_mask_B_L):
    """Position ids counting only attended tokens (what the local backend's sampler uses)."""
    return (attention_mask_B_L.cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------- evaluation
def evaluate(model_dir: str, teacher_dir: str, max_new_tokens: int, n: int = 256) -> dict:
    """Same for every system: full-vocab reverse KL(student || teacher) per completion token on
    fixed student rollouts (seeded, T = 1), and greedy accuracy on held-out prompts."""
    import torch

    from opdplug_local import models as local, sampling
    from opdplug_local.evaluate import accuracy_by_length
    from opdplug_local.tasks import SumChain

    student = local.load_model(model_dir, "student").eval()
    teacher = local.load_model(teacher_dir, "teacher").eval()
    tok = local.load_tokenizer(model_dir)
    task = SumChain(tokenizer=tok, min_len=LENGTHS[0], max_len=LENGTHS[1])
    prompts = task.prompts(n, seed=4242, split="eval")
    gen = torch.Generator().manual_seed(0)
    kl_sum, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 64):
            chunk = prompts[i:i + 64]
            out = sampling.sample(student, [list(p.prompt_ids) for p in chunk], max_new_tokens=max_new_tokens,
                                  temperature=1.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=gen)
            ids, attn = out.input_ids_B_L, out.attention_mask_B_L
            pos = positions(attn)
            ls = torch.log_softmax(student(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float(), -1)
            lt = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float(), -1)
            kl_B_L = (ls.exp() * (ls - lt)).sum(-1)[:, :-1]  # position t-1 predicts token t
            mask = out.completion_mask_B_L[:, 1:].bool()
            kl_sum += float(kl_B_L[mask].sum())
            tokens += int(mask.sum())
    acc = accuracy_by_length(student, tok, task, list(range(LENGTHS[0], LENGTHS[1] + 1)), n=50)
    return {"reverse_kl": kl_sum / max(tokens, 1), "eval_tokens": tokens,
            "greedy_accuracy": sum(acc.values()) / len(acc), "accuracy_by_T": {str(k): v for k, v in acc.items()}}


def prepare(out_dir: Path) -> tuple[str, str]:
    """The cached demo teacher and a private copy of the demo's cold-started student (made here
    with a short off-policy cold start if ``make demo`` has not left one)."""
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
