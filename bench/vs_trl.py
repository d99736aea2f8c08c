"""Performance 1: opdplug vs TRL's two distillation trainers on identical tiny models, data and settings.

Three systems distill the same cold-started student from the same SumChain teacher (the cached
``make demo`` teacher): opdplug, ``trl.experimental.gkd.GKDTrainer`` ("TRL GKD", key ``trl``) and
``trl.DistillationTrainer`` ("TRL Distillation", key ``distill``). All use the same steps, batch
(one optimizer step = ``--batch`` prompts, one on-policy student completion each, no gradient
accumulation), completion budget (max_new_tokens = DistillationConfig.max_completion_length),
sampling at T 1 with no top-p / top-k, fully on-policy generation (GKD lambda 1) and divergence:
reverse KL (GKD / Distillation beta 1) or JSD (beta 0.5; both TRL trainers define beta the same
way: mixture (1 - beta) p_student + beta p_teacher, beta 1 = KL(student || teacher)); lr 1e-3,
constant schedule, AdamW (0.9, 0.999), no weight decay, grad clip 1.0, fp32, no activation
checkpointing (TRL's configs turn it on by default), CPU, 1 thread per worker. The prompts of
step s are the same in all three (opdplug's own per-step SumChain prompts, fed to TRL in order,
unshuffled; DistillationTrainer gets them as plain text that tokenizes to the same ids).

What each does per step: opdplug samples with its own KV-cache sampler, scores with the teacher
and takes the full-vocabulary divergence on the student's logits; GKD generates with HF
``generate`` then runs full student and teacher forwards and ``generalized_jsd_loss`` on the
full logits; Distillation tokenizes the text prompts, generates with HF ``generate``, runs the
student and teacher backbones only and computes the divergence through both lm_heads chunk by
chunk (``ChunkedDivergenceFunction``), a token-mean over completion tokens.

Every run is its own subprocess (peak RSS = ru_maxrss read before evaluation), the systems
alternate in an order rotated every rep (opdplug GKD Distillation; Distillation opdplug GKD; ...),
and each worker times the interval between consecutive optimizer-step ends (dropping the first
``--skip`` steps) and attributes time to phases with light wrappers (generation, teacher forward,
student forward + loss, backward, optimizer incl. clipping, rest). After training, each final
student is evaluated by the SAME function: full-vocabulary reverse KL to the teacher per completion
token on a fixed set of student rollouts (256 held-out prompts, seeded sampler at T = 1), plus
greedy accuracy. A short cProfile run of each adds the top functions by own time.

    .venv/bin/python bench/vs_trl.py                 # ~4 min on 2 quiet CPU cores (7 reps x 3 systems x 40 steps)
    .venv/bin/python bench/vs_trl.py --divergence jsd
Writes runs/bench/vs_trl.json and runs/bench/vs_trl.png; the last printed line is the headline.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BETA = {"reverse_kl": 1.0, "jsd": 0.5}
LENGTHS = (2, 8)  # SumChain min_len, max_len (the demo's)
THREADS = 1  # per worker; 1 keeps timings stable when other jobs share the 2 cores
SYSTEMS = ("opdplug", "trl", "distill")  # "trl" is GKD (the key of earlier results)
LABELS = {"opdplug": "opdplug", "trl": "TRL GKD", "distill": "TRL Distillation"}


# ----------------------------------------------------------------------------- phase timers
class Phases:
    """Exclusive wall time per phase: a call nested in an active phase is not counted again."""

    def __init__(self, prof=None):
        self.t = {}
        self.active = None
        self.prof = prof

    def wrap(self, name, fn):
        def wrapped(*a, **k):
            if self.active is not None:
                return fn(*a, **k)
            self.active = name
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
                self.active = None
        return wrapped

    def reset(self):
        self.t = {}
        if self.prof is not None:  # profile the training steps only, not imports and set-up
            self.prof.enable()


def step_prompts(task, seed: int, step: int, batch: int):
    """opdplug's prompts for ``step`` (micro-batch 0, process 0): what loop.train_step draws."""
    from opdplug.context import derive_seed

    return task.prompts(batch, seed=derive_seed(seed, "prompts", step, 0, 0), split="train")


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
            pos = sampling._positions(attn)
            ls = torch.log_softmax(student(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float(), -1)
            lt = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float(), -1)
            kl_B_L = (ls.exp() * (ls - lt)).sum(-1)[:, :-1]  # position t-1 predicts token t
            mask = out.completion_mask_B_L[:, 1:].bool()
            kl_sum += float(kl_B_L[mask].sum())
            tokens += int(mask.sum())
    acc = accuracy_by_length(student, tok, task, list(range(LENGTHS[0], LENGTHS[1] + 1)), n=50)
    return {"reverse_kl": kl_sum / max(tokens, 1), "eval_tokens": tokens,
            "greedy_accuracy": sum(acc.values()) / len(acc), "accuracy_by_T": {str(k): v for k, v in acc.items()}}


# ----------------------------------------------------------------------------- workers
def worker_opdplug(a, phases: Phases, marks: list):
    import opdplug_local.plugin
    import opdplug.loop as loop
    from opdplug_local import sampling
    from opdplug_local.demo import _config
    from opdplug_local.demo import DemoRecipe
    from opdplug.hookspecs import hookimpl

    recipe = DemoRecipe(min_len=LENGTHS[0], max_len=LENGTHS[1], threads=THREADS)
    config, manager = _config(
        recipe, Path(a.work) / "run",
        run={"seed": a.seed, "steps": a.steps, "batch_size": a.batch, "lr": a.lr, "progress": False, "log_every": 10**6,
             "checkpoint_every": 0, "max_grad_norm": 1.0},
        student={"path": a.student},
        teacher={"path": a.teacher, "scorer": "local"},
        rollout={"sampler": "on_policy", "temperature": 1.0, "max_new_tokens": a.max_new_tokens},
        loss={"support": "full", "divergence": a.divergence, "update": "direct",
              **({"divergence_options": {"beta": 0.5}} if a.divergence == "jsd" else {})},
    )

    class Mark:
        @hookimpl
        def opd_step_end(self, ctx, step, metrics):
            marks.append(time.perf_counter())

        @hookimpl
        def opd_configure(self, ctx):
            # wrap the pieces of one step; the optimizer is patched once it exists (below)
            manager.hook.opd_loss = phases.wrap("student fwd + loss", manager.hook.opd_loss)
            ctx.accelerator.backward = phases.wrap("backward", ctx.accelerator.backward)
            ctx.accelerator.clip_grad_norm_ = phases.wrap("optimizer (+clip)", ctx.accelerator.clip_grad_norm_)

    manager.register(Mark(), "bench-mark")
    sampling.sample = phases.wrap("generation", sampling.sample)
    opdplug_local.plugin.score_with_model = phases.wrap("teacher forward", opdplug_local.plugin.score_with_model)
    loop.student_forward = phases.wrap("student fwd + loss", loop.student_forward)
    real_make = loop.make_optimizer

    def make_optimizer(ctx):
        opt, sched = real_make(ctx)
        opt.step = phases.wrap("optimizer (+clip)", opt.step)
        return opt, sched

    loop.make_optimizer = make_optimizer
    mark0 = []

    real_train_step = loop.train_step

    def train_step(ctx, optimizer, scheduler, step):
        if step == 0:  # preflight and set-up are not steps
            phases.reset()
            mark0.append(time.perf_counter())
        return real_train_step(ctx, optimizer, scheduler, step)

    loop.train_step = train_step
    result = loop.train(config, manager, progress_desc="opdplug")
    return str(result.final_model_dir), mark0[0]


def worker_trl(a, phases: Phases, marks: list):
    import datasets
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from opdplug_local import models as local
    from opdplug_local.tasks import SumChain

    tok = local.load_tokenizer(a.student)
    student = local.load_model(a.student, "student")
    teacher = local.load_model(a.teacher, "teacher")
    task = SumChain(tokenizer=tok, min_len=LENGTHS[0], max_len=LENGTHS[1])
    rows = []
    for s in range(a.steps):  # the same prompts, in the same order, as opdplug's steps
        for p in step_prompts(task, a.seed, s, a.batch):
            rows.append({"prompt_ids": list(p.prompt_ids), "completion_ids": list(p.reference_ids)})
    ds = datasets.Dataset.from_list(rows)
    pad_id = tok.pad_token_id

    def left_pad(seqs, value):
        L = max(len(x) for x in seqs)
        return torch.tensor([[value] * (L - len(x)) + list(x) for x in seqs], dtype=torch.long)

    def collate(examples):
        # DataCollatorForChatML's output, without a chat template: prompt + reference completion
        # (labels on the completion), and the left-padded prompts GKD generates from.
        full = [e["prompt_ids"] + e["completion_ids"] for e in examples]
        labels = [[-100] * len(e["prompt_ids"]) + e["completion_ids"] for e in examples]
        return {
            "input_ids": left_pad(full, pad_id), "attention_mask": left_pad([[1] * len(x) for x in full], 0),
            "labels": left_pad(labels, -100),
            "prompts": left_pad([e["prompt_ids"] for e in examples], pad_id),
            "prompt_attention_mask": left_pad([[1] * len(e["prompt_ids"]) for e in examples], 0),
        }

    args = GKDConfig(
        output_dir=str(Path(a.work) / "run"), per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, optim="adamw_torch",
        lmbda=1.0, beta=BETA[a.divergence], temperature=1.0, max_new_tokens=a.max_new_tokens,
        report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=a.seed, bf16=False, fp16=False,
        # TRL's configs default gradient_checkpointing to True, which transformers 5 maps to activation
        # checkpointing (recomputation in backward); opdplug does not checkpoint, so neither do these runs
        activation_checkpointing=False,
    )

    class Mark(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            assert not kw["model"].is_activation_checkpointing  # enabled (or not) by train(), before this
            phases.reset()
            marks.append(("begin", time.perf_counter()))

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                         processing_class=tok, data_collator=collate, callbacks=[Mark()])
    trainer._get_train_sampler = lambda *x, **k: SequentialSampler(ds)
    # phase wrappers
    GKDTrainer.generate_on_policy_outputs = staticmethod(phases.wrap("generation", GKDTrainer.generate_on_policy_outputs))
    trainer.compute_loss = phases.wrap("student fwd + loss", trainer.compute_loss)
    return train_timed(trainer, trainer.teacher_model, phases, marks, Path(a.work) / "final", tok)


def worker_distill(a, phases: Phases, marks: list):
    """``trl.DistillationTrainer`` (TRL's non-experimental on-policy distillation trainer).

    Per optimizer step (gradient_accumulation_steps 1, so one generation batch = one step): the
    ``--batch`` text prompts are tokenized with ``processing_class(text=...)``, the student samples
    one completion each with ``model.generate`` (transformers, no vLLM; T 1, top_p 1, top_k 0,
    ``max_completion_length`` tokens, completion kept up to and including the first EOS); then
    ``compute_loss`` runs the student backbone with grad and the teacher backbone under no_grad on
    prompt + completion (hidden states only), and ``ChunkedDivergenceFunction`` projects both
    through their lm_heads chunk by chunk (on CPU: every position, padding masked afterwards) and
    returns the per-token divergence, summed over completion tokens / their number.

    Sign convention of its ``beta`` (trl/kernels/chunked_divergence.py, same as GKD's
    ``generalized_jsd_loss``): mixture m = (1 - beta) p_student + beta p_teacher, loss =
    beta KL(p_teacher || m) + (1 - beta) KL(p_student || m); beta 1 is special-cased to the
    reverse KL(p_student || p_teacher) = sum_v p_s (log p_s - log p_t), beta 0 to the forward
    KL(p_teacher || p_student); beta 0.5 is the symmetric JSD. So BETA (1.0 / 0.5) means the same
    divergence here as in GKD and opdplug.
    """
    import datasets
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from opdplug_local import models as local
    from opdplug_local.tasks import SumChain

    tok = local.load_tokenizer(a.student)
    student = local.load_model(a.student, "student")
    teacher = local.load_model(a.teacher, "teacher")
    task = SumChain(tokenizer=tok, min_len=LENGTHS[0], max_len=LENGTHS[1])
    # Plain-text prompts (the word-level tokenizer has no chat template, so a non-conversational
    # "prompt" column is what DistillationTrainer tokenizes with processing_class(text=...)): the
    # same prompts, in the same order, as opdplug's steps. The text must give exactly opdplug's ids.
    expected_ids, texts = [], []
    for s in range(a.steps):
        for p in step_prompts(task, a.seed, s, a.batch):
            expected_ids.append(list(p.prompt_ids))
            texts.append(tok.decode(p.prompt_ids, skip_special_tokens=True))
    got = tok(text=texts)["input_ids"]  # what DistillationTrainer._tokenize_prompts does
    assert got == expected_ids, f"text prompts do not round-trip: {texts[0]!r} -> {got[0]} != {expected_ids[0]}"
    ds = datasets.Dataset.from_list([{"prompt": t} for t in texts])

    args = DistillationConfig(
        output_dir=str(Path(a.work) / "run"), per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, optim="adamw_torch",
        beta=BETA[a.divergence], temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
        max_completion_length=a.max_new_tokens, use_vllm=False, shuffle_dataset=False,
        # TRL's configs default gradient_checkpointing to True, which transformers 5 maps to activation
        # checkpointing (recomputation in backward); opdplug does not checkpoint, so neither do these runs
        activation_checkpointing=False,
        report_to="none", save_strategy="no", logging_steps=10**6, log_completions=False, disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, seed=a.seed, bf16=False, fp16=False,
    )

    class Mark(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            assert not kw["model"].is_activation_checkpointing  # enabled (or not) by train(), before this
            phases.reset()
            marks.append(("begin", time.perf_counter()))

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                  processing_class=tok, callbacks=[Mark()])
    # phase wrappers. Generation = _generate_and_score_completions (called from _prepare_inputs,
    # before compute_loss): prompt tokenization, model.generate, EOS masking, padding to tensors.
    real_gen = trainer._generate_and_score_completions
    seen = {"n": 0}

    def generate(inputs):
        s = seen["n"]  # the trainer must feed opdplug's step-s prompts at step s (shuffle off)
        assert [x["prompt"] for x in inputs] == texts[s * a.batch:(s + 1) * a.batch], f"prompt order differs at step {s}"
        seen["n"] += 1
        return real_gen(inputs)

    trainer._generate_and_score_completions = phases.wrap("generation", generate)
    trainer.compute_loss = phases.wrap("student fwd + loss", trainer.compute_loss)
    # The teacher runs inside compute_loss, and only its backbone (_get_last_hidden_state calls
    # teacher.base_model directly; teacher.forward is never called); its lm_head projection happens
    # inside the chunked loss and so stays in "student fwd + loss". Time the backbone, subtract below.
    backbone = trainer.accelerator.unwrap_model(trainer.teacher_model).base_model
    result = train_timed(trainer, backbone, phases, marks, Path(a.work) / "final", tok)
    assert seen["n"] == a.steps, f"{seen['n']} generation batches for {a.steps} steps"
    return result


def train_timed(trainer, teacher_module, phases: Phases, marks: list, final: Path, tok):
    """Train a TRL trainer with its backward and optimizer phases timed, save the final student,
    and return ``(final dir, start time)``. The teacher runs inside ``compute_loss``: it is timed
    apart and its time moved from "student fwd + loss" to "teacher forward"."""
    inner = {"t": 0.0}
    real_teacher = teacher_module.forward

    def timed_teacher(*x, **k):
        t0 = time.perf_counter()
        try:
            return real_teacher(*x, **k)
        finally:
            inner["t"] += time.perf_counter() - t0

    teacher_module.forward = timed_teacher
    trainer.accelerator.backward = phases.wrap("backward", trainer.accelerator.backward)
    real_create = trainer.create_optimizer

    def create_optimizer(*x, **k):
        opt = real_create(*x, **k)
        opt.step = phases.wrap("optimizer (+clip)", opt.step)
        return opt

    trainer.create_optimizer = create_optimizer
    trainer.accelerator.clip_grad_norm_ = phases.wrap("optimizer (+clip)", trainer.accelerator.clip_grad_norm_)
    trainer.train()
    phases.t["teacher forward"] = phases.t.get("teacher forward", 0.0) + inner["t"]
    phases.t["student fwd + loss"] = phases.t.get("student fwd + loss", 0.0) - inner["t"]
    trainer.model.save_pretrained(final, safe_serialization=True)
    tok.save_pretrained(final)
    begin = next(m for m in marks if isinstance(m, tuple))[1]
    marks[:] = [m for m in marks if not isinstance(m, tuple)]
    return str(final), begin


def worker(a) -> None:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(a.seed)
    prof = cProfile.Profile() if a.cprofile else None
    phases, marks = Phases(prof), []
    fn = {"opdplug": worker_opdplug, "trl": worker_trl, "distill": worker_distill}[a.system]
    final_dir, t_begin = fn(a, phases, marks)
    if prof:
        prof.disable()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    intervals = [t1 - t0 for t0, t1 in zip([t_begin] + marks[:-1], marks)]
    out = {"system": a.system, "step_s": intervals, "peak_rss_mb": peak_rss_mb,
           "phases_s": dict(phases.t), "train_s": marks[-1] - t_begin}
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
        out["cprofile_tottime"] = s.getvalue()
    else:
        out["eval"] = evaluate(final_dir, a.teacher, a.max_new_tokens)
    Path(a.out).write_text(json.dumps(out))


# ----------------------------------------------------------------------------- driver
def prepare(out_dir: Path) -> tuple[str, str]:
    """The cached demo teacher and a private copy of the demo's cold-started student (made here
    with a short off-policy cold start if ``make demo`` has not left one)."""
    from opdplug_local.demo import DemoRecipe, train_teacher

    teacher = str(train_teacher(DemoRecipe()))
    student = out_dir / "student_cold_start"
    if not (student / "config.json").is_file():
        src = ROOT / "runs" / "demo" / "cold_start" / "final"
        if (src / "config.json").is_file():  # what `make demo` leaves (its 250-step cold start)
            shutil.copytree(src, student, dirs_exist_ok=True)
        else:
            from opdplug_local.demo import _config
            from opdplug.loop import train

            config, manager = _config(
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


def spread(xs):
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(round(f * (len(xs) - 1))))]  # noqa: E731
    return {"median": statistics.median(xs), "p10": q(0.1), "p90": q(0.9), "min": xs[0], "max": xs[-1], "n": len(xs)}


def run_worker(a, system, rep, teacher, student, out_dir, steps, cprofile=False) -> dict:
    work = out_dir / "work" / f"{system}-{rep}{'-prof' if cprofile else ''}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res = work / "result.json"
    cmd = [sys.executable, __file__, "--worker", system, "--work", str(work), "--out", str(res),
           "--teacher", teacher, "--student", student, "--steps", str(steps), "--batch", str(a.batch),
           "--max-new-tokens", str(a.max_new_tokens), "--divergence", a.divergence, "--lr", str(a.lr),
           "--seed", str(0 if cprofile else rep)]
    if cprofile:
        cmd.append("--cprofile")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{system} worker failed (rc {proc.returncode})")
    out = json.loads(res.read_text())
    out["process_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=27, help="3 T + 3 at T = 8: the longest reference")
    p.add_argument("--divergence", choices=sorted(BETA), default="reverse_kl")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--reps", type=int, default=7, help="rounds of one run per system (order rotated each round)")
    p.add_argument("--skip", type=int, default=3, help="first steps of each run left out of the timing")
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "bench"))
    # worker mode
    p.add_argument("--worker", choices=list(SYSTEMS))
    p.add_argument("--work"), p.add_argument("--out"), p.add_argument("--teacher"), p.add_argument("--student")
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="worker: run seed (prompts, sampling); rep r uses seed r")
    a = p.parse_args()
    if a.worker:
        a.system = a.worker
        worker(a)
        return

    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, student = prepare(out_dir)
    import trl

    print(f"teacher {teacher}\nstudent {student}\ntrl {trl.__version__}; steps {a.steps}, batch {a.batch}, "
          f"max_new_tokens {a.max_new_tokens}, lambda 1.0, {a.divergence} (GKD/Distillation beta {BETA[a.divergence]}), lr {a.lr}")
    systems = SYSTEMS
    runs = {s: [] for s in systems}
    for rep in range(a.reps):  # rep r: run seed r in every system (same prompts, different draws)
        # rotated order: rep 0 opdplug gkd distill, rep 1 distill opdplug gkd, rep 2 gkd distill opdplug
        order = [systems[(i - rep) % len(systems)] for i in range(len(systems))]
        for s in order:
            r = run_worker(a, s, rep, teacher, student, out_dir, a.steps)
            runs[s].append(r)
            st = r["step_s"][a.skip:]
            print(f"  rep {rep} {LABELS[s]:16s} median step {statistics.median(st) * 1e3:6.1f} ms  peak RSS {r['peak_rss_mb']:6.0f} MB  "
                  f"reverse KL {r['eval']['reverse_kl']:.4f}  acc {r['eval']['greedy_accuracy']:.3f}  ({r['process_s']:.0f} s)", flush=True)
    profiles = {s: run_worker(a, s, 0, teacher, student, out_dir, a.profile_steps, cprofile=True) for s in systems}

    from opdplug_local.demo import DemoRecipe  # noqa: F401  (keeps the import graph warm for the eval below)

    init = evaluate(student, teacher, a.max_new_tokens)
    summary = {}
    for s in systems:
        steps = [x for r in runs[s] for x in r["step_s"][a.skip:]]
        phase_tot = {}
        for r in runs[s]:
            for k, v in r["phases_s"].items():
                phase_tot[k] = phase_tot.get(k, 0.0) + v
        train_tot = sum(r["train_s"] for r in runs[s])
        phase_tot["rest (loop, data, hooks)"] = train_tot - sum(phase_tot.values())
        summary[s] = {
            "step_s": spread(steps),
            "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs[s]]),
            "reverse_kl": spread([r["eval"]["reverse_kl"] for r in runs[s]]),
            "greedy_accuracy": spread([r["eval"]["greedy_accuracy"] for r in runs[s]]),
            "phase_fraction": {k: v / train_tot for k, v in phase_tot.items()},
            "phase_ms_per_step": {k: 1e3 * v / (a.steps * len(runs[s])) for k, v in phase_tot.items()},
        }
    o = summary["opdplug"]
    vs = []
    for s in systems[1:]:
        t = summary[s]
        speed = t["step_s"]["median"] / o["step_s"]["median"]
        rss = o["peak_rss_mb"]["median"] / t["peak_rss_mb"]["median"]
        # Each rep runs the systems back to back, so its ratio is the least disturbed by the
        # machine's load drifting between reps.
        per_rep = sorted(statistics.median(rt["step_s"][a.skip:]) / statistics.median(ro["step_s"][a.skip:])
                         for rt, ro in zip(runs[s], runs["opdplug"]))
        t["speedup_per_rep"] = per_rep
        vs.append(f"{speed:.2f}x {'faster' if speed >= 1 else 'slower'} per step (median; per-rep ratios "
                  f"{statistics.median(per_rep):.2f}x median, {per_rep[0]:.2f}-{per_rep[-1]:.2f}x) and {rss:.2f}x the peak RSS of {LABELS[s]}")
    kls = " / ".join(f"{summary[s]['reverse_kl']['median']:.4f}" for s in systems)
    headline = (f"opdplug is {'; '.join(vs)}; final reverse KL {kls} "
                f"({' / '.join(LABELS[s] for s in systems)}; start {init['reverse_kl']:.4f})")

    print("\nwhere the time goes (ms per step, all timed runs; wall time incl. first steps)")
    names = ["generation", "teacher forward", "student fwd + loss", "backward", "optimizer (+clip)", "rest (loop, data, hooks)"]
    print(f"{'phase':26s}" + "".join(f"{LABELS[s]:>18s}" for s in systems))
    for k in names:
        print(f"{k:26s}" + "".join(f"{summary[s]['phase_ms_per_step'].get(k, 0):18.1f}" for s in systems))
    for s in systems:
        print(f"\ncProfile of {LABELS[s]} ({a.profile_steps} steps), top functions by own time:")
        lines = [ln for ln in profiles[s]["cprofile_tottime"].splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
        print("\n".join(lines[start:start + 9]))

    result = {"settings": {k: getattr(a, k) for k in ("steps", "batch", "max_new_tokens", "divergence", "lr", "reps", "skip")}
              | {"lambda": 1.0, "gkd_beta": BETA[a.divergence], "distillation_beta": BETA[a.divergence],
                 "labels": LABELS, "trl": trl.__version__, "teacher": teacher, "student": student,
                 "threads": THREADS, "lengths": LENGTHS},
              "initial_student": init, "summary": summary,
              "runs": {s: [{k: v for k, v in r.items() if k != "cprofile_tottime"} for r in runs[s]] for s in systems},
              "cprofile": {s: profiles[s]["cprofile_tottime"] for s in systems}, "headline": headline}
    (out_dir / "vs_trl.json").write_text(json.dumps(result, indent=1))
    plot(summary, init, out_dir / "vs_trl.png", a)

    print(f"\n{'system':18s}{'step ms med':>12s}{'p10-p90':>16s}{'peak RSS MB':>13s}{'rev KL':>9s}{'acc':>7s}")
    for s in systems:
        x = summary[s]
        print(f"{LABELS[s]:18s}{x['step_s']['median'] * 1e3:12.1f}{x['step_s']['p10'] * 1e3:8.1f}-{x['step_s']['p90'] * 1e3:<7.1f}"
              f"{x['peak_rss_mb']['median']:13.0f}{x['reverse_kl']['median']:9.4f}{x['greedy_accuracy']['median']:7.3f}")
    print(f"(wrote {out_dir / 'vs_trl.json'} and {out_dir / 'vs_trl.png'})")
    print(headline)


def plot(summary, init, path, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(SYSTEMS)
    labels = [LABELS[s].replace("TRL ", "TRL\n") for s in systems]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    panels = [("step_s", "ms per step (median, p10-p90)", 1e3), ("peak_rss_mb", "peak RSS (MB)", 1.0),
              ("reverse_kl", f"reverse KL after {a.steps} steps", 1.0)]
    for ax, (key, title, scale) in zip(axes, panels):
        med = [summary[s][key]["median"] * scale for s in systems]
        lo = [med[i] - summary[s][key]["p10"] * scale for i, s in enumerate(systems)]
        hi = [summary[s][key]["p90"] * scale - med[i] for i, s in enumerate(systems)]
        ax.bar(labels, med, yerr=[lo, hi], color=["tab:blue", "tab:orange", "tab:green"], capsize=4)
        if key == "reverse_kl":
            ax.axhline(init["reverse_kl"], ls="--", color="gray", label="start")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"SumChain, batch {a.batch}, max_new_tokens {a.max_new_tokens}, lambda 1, {a.divergence}, {THREADS} CPU thread(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
