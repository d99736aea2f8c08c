"""The workers of ``vs_trl.py``: one training run of one system (opdplug, TRL GKD, TRL
Distillation), each in its own process, its optimizer steps timed and its time attributed to
phases, its resident memory sampled over the training steps (``rss_sampler``), the sequence
tokens of every step counted (for the FLOPs of ``vs_trl_mfu``), then the evaluation every
system gets (``vs_trl_setup.evaluate``)."""
from __future__ import annotations

import cProfile
import io
import json
import pstats
import resource
import time
from pathlib import Path

from rss_sampler import RssSampler
from vs_trl_setup import BETA, LENGTHS, THREADS, all_step_prompts, evaluate, make_task, pad_id_of, task_section

from opdplug_local.demo import demo_config


# ----------------------------------------------------------------------------- phase timers
class Phases:
    """Exclusive wall time per phase: a call nested in an active phase is not counted again."""

    def __init__(self, prof=None, steps: int = 0):
        self.t = {}
        self.active = None
        self.prof = prof
        self.rss = RssSampler()
        self.steps = steps
        self.seq_tokens = []  # per optimizer step: non-padding tokens of prompt + completion
        self.completion_tokens = []  # per optimizer step (opdplug only): completion tokens

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
        self.rss.start()  # memory of the training steps only (set-up and evaluation are outside)
        if self.prof is not None:  # profile the training steps only, not imports and set-up
            self.prof.enable()

    def step_end(self, marks: list):
        """Called at every optimizer step's end: the time mark, and the sampler stops after the last."""
        marks.append(time.perf_counter())
        if len(marks) == self.steps:
            self.rss.stop()


# ----------------------------------------------------------------------------- workers
def worker_opdplug(a, phases: Phases, marks: list):
    import opdplug_local.scorers
    import opdplug.loop as loop
    from opdplug_local import sampling
    from opdplug_local.demo import DemoRecipe
    from opdplug.hookspecs import hookimpl

    recipe = DemoRecipe(min_len=LENGTHS[0], max_len=LENGTHS[1], threads=THREADS)
    size_sections = task_section(a.size)  # realistic: the dataset task (the demo's SumChain otherwise)
    config, manager = demo_config(
        recipe, Path(a.work) / "run",
        run={"seed": a.seed, "steps": a.steps, "batch_size": a.batch, "lr": a.lr, "progress": False, "log_every": 10**6,
             "checkpoint_every": 0, "max_grad_norm": 1.0},
        student={"path": a.student},
        teacher={"path": a.teacher, "scorer": "local"},
        rollout={"sampler": "on_policy", "temperature": 1.0, "max_new_tokens": a.max_new_tokens},
        loss={"support": "full", "divergence": a.divergence, "update": "direct",
              **({"divergence_options": {"beta": 0.5}} if a.divergence == "jsd" else {})},
        **size_sections,
    )

    class Mark:
        @hookimpl
        def opd_step_end(self, ctx, step, metrics):
            phases.seq_tokens.append(metrics["rollout/sequence_tokens_total"])
            phases.completion_tokens.append(metrics["tokens"])  # trained = completion tokens (one process)
            phases.step_end(marks)

        @hookimpl
        def opd_configure(self, ctx):
            # wrap the pieces of one step; the optimizer is patched once it exists (below)
            manager.hook.opd_loss = phases.wrap("student fwd + loss", manager.hook.opd_loss)
            ctx.accelerator.backward = phases.wrap("backward", ctx.accelerator.backward)
            ctx.accelerator.clip_grad_norm_ = phases.wrap("optimizer (+clip)", ctx.accelerator.clip_grad_norm_)

    manager.register(Mark(), "bench-mark")
    sampling.sample = phases.wrap("generation", sampling.sample)
    # the local scorer calls score_with_model through its own module (opdplug_local.scorers)
    opdplug_local.scorers.score_with_model = phases.wrap("teacher forward", opdplug_local.scorers.score_with_model)
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


def step_marks(phases: Phases, marks: list):
    """A TRL trainer callback that times each optimizer step the way the opdplug worker does."""
    from transformers import TrainerCallback

    class Mark(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            assert not kw["model"].is_activation_checkpointing  # enabled (or not) by train(), before this
            phases.reset()
            marks.append(("begin", time.perf_counter()))

        def on_step_end(self, args, state, control, **kw):
            phases.step_end(marks)

    return Mark()


def worker_trl(a, phases: Phases, marks: list):
    import datasets
    import torch
    from torch.utils.data import SequentialSampler
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from opdplug_local import models as local

    tok = local.load_tokenizer(a.student)
    student = local.load_model(a.student, "student")
    teacher = local.load_model(a.teacher, "teacher")
    task = make_task(a.size, tok)
    rows = []
    for step in all_step_prompts(task, a.seed, a.steps, a.batch):  # the same prompts, in the same order, as opdplug's steps
        for p in step:
            rows.append({"prompt_ids": list(p.prompt_ids), "completion_ids": list(p.reference_ids)})
    ds = datasets.Dataset.from_list(rows)
    pad_id = pad_id_of(tok)

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

    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                         processing_class=tok, data_collator=collate, callbacks=[step_marks(phases, marks)])
    trainer._get_train_sampler = lambda *x, **k: SequentialSampler(ds)
    # phase wrappers
    real_gen = GKDTrainer.generate_on_policy_outputs

    def generate(*x, **k):
        out = real_gen(*x, **k)
        phases.seq_tokens.append(float(out[1].sum()))  # new_attention_mask: prompt + completion tokens
        return out

    GKDTrainer.generate_on_policy_outputs = staticmethod(phases.wrap("generation", generate))
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
    from trl import DistillationConfig, DistillationTrainer

    from opdplug_local import models as local

    tok = local.load_tokenizer(a.student)
    student = local.load_model(a.student, "student")
    teacher = local.load_model(a.teacher, "teacher")
    task = make_task(a.size, tok)
    pad_id_of(tok)
    # Plain-text prompts (a non-conversational "prompt" column is what DistillationTrainer tokenizes
    # with processing_class(text=...)): the same prompts, in the same order, as opdplug's steps. The
    # text must give exactly opdplug's ids. At the realistic size the text is the chat-rendered
    # prompt, special tokens included (the template already applied, as opdplug's ids have it).
    expected_ids, texts = [], []
    for step in all_step_prompts(task, a.seed, a.steps, a.batch):
        for p in step:
            expected_ids.append(list(p.prompt_ids))
            texts.append(tok.decode(p.prompt_ids, skip_special_tokens=a.size == "tiny"))
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

    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                  processing_class=tok, callbacks=[step_marks(phases, marks)])
    # phase wrappers. Generation = _generate_and_score_completions (called from _prepare_inputs,
    # before compute_loss): prompt tokenization, model.generate, EOS masking, padding to tensors.
    real_gen = trainer._generate_and_score_completions
    seen = {"n": 0}

    def generate(inputs):
        s = seen["n"]  # the trainer must feed opdplug's step-s prompts at step s (shuffle off)
        assert [x["prompt"] for x in inputs] == texts[s * a.batch:(s + 1) * a.batch], f"prompt order differs at step {s}"
        seen["n"] += 1
        out = real_gen(inputs)
        phases.seq_tokens.append(float(out["prompt_mask"].sum() + out["completion_mask"].sum()))
        return out

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
    phases, marks = Phases(prof, steps=a.steps), []
    fn = {"opdplug": worker_opdplug, "trl": worker_trl, "distill": worker_distill}[a.system]
    final_dir, t_begin = fn(a, phases, marks)
    if prof:
        prof.disable()
    phases.rss.stop()
    lifetime_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; imports included
    intervals = [t1 - t0 for t0, t1 in zip([t_begin] + marks[:-1], marks)]
    out = {"system": a.system, "step_s": intervals, "peak_rss_mb": phases.rss.peak / 2**20,
           "rss_at_train_start_mb": phases.rss.at_start / 2**20, "rss_samples": phases.rss.samples,
           "lifetime_max_rss_mb": lifetime_rss_mb, "seq_tokens": phases.seq_tokens,
           "completion_tokens": phases.completion_tokens,
           "phases_s": dict(phases.t), "train_s": marks[-1] - t_begin}
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
        out["cprofile_tottime"] = s.getvalue()
    else:
        out["eval"] = evaluate(final_dir, a.teacher, a.max_new_tokens, a.size, a.eval_prompts)
    Path(a.out).write_text(json.dumps(out))
