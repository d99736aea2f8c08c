"""A toy plugin for the kernel's own tests: every component a run needs, in a few lines of torch,
so the kernel is tested without any first-party plugin. The backend (the models) is its own
plugin, ``toy_backend``; a manager for a kernel test is ``make_plugin_manager([toy_plugin,
toy_backend], autoload=False)``.

It declares the ``[toy]`` table and registers, each as its kind's default: the task ``count``
(random digits; the reference counts on from the last one), the sampler ``sample`` (from the
student, one seed per global row) and ``reference`` (the task's reference), the scorer ``bigram``
(the frozen teacher, dense scores), the credit scheme ``uniform``; and the verifier ``exact``.
``opd_loss`` (trylast) is the reverse KL over the whole vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from opdplug.context import derive_seed
from opdplug.hookspecs import hookimpl
from opdplug.types import (
    PRODUCER_PAD, PRODUCER_PROMPT, PRODUCER_REFERENCE, PRODUCER_STUDENT, Credit, LossOutput, Prompt, RolloutBatch,
    TeacherScores,
)

PAD, BOS, EOS, DIGIT0 = 0, 1, 2, 3
VOCAB = DIGIT0 + 10
COMPLETION = 3
"""Digits of a reference completion (then EOS)."""


@dataclass(frozen=True)
class ToyOptions:
    """``[toy]``."""

    hidden: int = 8
    """Hidden size of the student and the teacher."""
    teacher_seed: int = 1
    """Seed of the teacher's random weights."""


class ToyTokenizer:
    """Token ids: 0 pad, 1 BOS, 2 EOS, 3-12 the digits 0-9."""

    pad_token_id, bos_token_id, eos_token_id, vocab_size = PAD, BOS, EOS, VOCAB

    def __len__(self) -> int:
        return VOCAB

    def decode(self, ids: Sequence[int]) -> str:
        names = {PAD: "<pad>", BOS: "<s>", EOS: "</s>"}
        return " ".join(names.get(int(i), str(int(i) - DIGIT0)) for i in ids)


@dataclass(frozen=True)
class CountOptions:
    """``[task.options]`` of ``count``."""

    prompt_len: int = 3
    """Digits per prompt."""


class CountTask:
    """Prompts of random digits; the reference counts on (mod 10) from the last digit."""

    options_class = CountOptions

    def __init__(self, tokenizer=None, options: Optional[CountOptions] = None):
        self.options = options or CountOptions()
        if self.options.prompt_len < 1:
            raise ValueError("prompt_len must be at least 1")

    def prompts(self, n, *, seed, split="train", length=None):
        g = torch.Generator().manual_seed(derive_seed(seed, split))
        out = []
        for _ in range(n):
            digits = torch.randint(0, 10, (length or self.options.prompt_len,), generator=g).tolist()
            reference = [DIGIT0 + (digits[-1] + i) % 10 for i in range(1, COMPLETION + 1)] + [EOS]
            out.append(Prompt(prompt_ids=(BOS, *(DIGIT0 + d for d in digits)), reference_ids=tuple(reference),
                              meta={"length": len(digits)}))
        return out

    def max_new_tokens(self, length: int) -> int:
        return COMPLETION + 1

    def verify(self, prompt: Prompt, completion_ids) -> float:
        return float(tuple(completion_ids) == prompt.reference_ids)


def collate(prompts: Sequence[Prompt], completions, logprobs, *, producer: int, on_policy: bool) -> RolloutBatch:
    """A right-padded ``RolloutBatch``; every completion token is trained on."""
    B, L = len(prompts), max(len(p.prompt_ids) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((B, L), PAD)
    attention, loss_mask = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, L, dtype=torch.long)
    producers, sampled = torch.full((B, L), PRODUCER_PAD), torch.zeros(B, L)
    for i, (p, c, lp) in enumerate(zip(prompts, completions, logprobs)):
        P, C = len(p.prompt_ids), len(c)
        ids[i, : P + C] = torch.tensor([*p.prompt_ids, *c])
        attention[i, : P + C] = 1
        loss_mask[i, P : P + C] = 1
        producers[i, :P], producers[i, P : P + C] = PRODUCER_PROMPT, producer
        sampled[i, P : P + C] = torch.tensor(lp, dtype=torch.float32)
    return RolloutBatch(
        input_ids_B_L=ids, attention_mask_B_L=attention, loss_mask_B_L=loss_mask, producer_B_L=producers,
        sampling_logprobs_B_L=sampled, prompt_lens_B=torch.tensor([len(p.prompt_ids) for p in prompts]),
        truncated_B=torch.tensor([not c or c[-1] != EOS for c in completions]),
        on_policy_B=torch.full((B,), on_policy), prompts=tuple(prompts),
    )


def budget(ctx, prompts) -> int:
    return ctx.config.rollout.max_new_tokens or ctx.task.max_new_tokens(max(p.meta["length"] for p in prompts))


@dataclass(frozen=True)
class SampleFromStudent:
    """The student's own completions, one generator per global row (``ctx.row_seeds``)."""

    def __call__(self, ctx, prompts, step) -> RolloutBatch:
        model, temperature = ctx.student_module(), ctx.config.rollout.temperature
        completions, logprobs = [], []
        with torch.no_grad():
            for prompt, seed in zip(prompts, ctx.row_seeds(prompts, "toy", step)):
                g = torch.Generator().manual_seed(seed)
                last, ids, lps = prompt.prompt_ids[-1], [], []
                for _ in range(budget(ctx, prompts)):
                    logp = torch.log_softmax(model.next_logits(torch.tensor([last], device=ctx.device)) / temperature, -1)[0]
                    last = int(torch.multinomial(logp.exp().cpu(), 1, generator=g))
                    ids.append(last)
                    lps.append(float(logp[last]))
                    if last == EOS:
                        break
                completions.append(ids)
                logprobs.append(lps)
        return collate(prompts, completions, logprobs, producer=PRODUCER_STUDENT, on_policy=True)


@dataclass(frozen=True)
class Reference:
    """The task's reference completions (no model involved)."""

    def __call__(self, ctx, prompts, step) -> RolloutBatch:
        refs = [list(p.reference_ids) for p in prompts]
        return collate(prompts, refs, [[0.0] * len(r) for r in refs], producer=PRODUCER_REFERENCE, on_policy=False)


@dataclass(frozen=True)
class BigramTeacher:
    """Dense scores from the frozen teacher ``toy_backend`` loaded."""

    def __call__(self, ctx, batch) -> TeacherScores:
        ids = batch.input_ids_B_L.to(ctx.device)
        hidden, head, temperature = ctx.teacher(ids), ctx.teacher.head, ctx.config.rollout.temperature
        logp = torch.log_softmax(hidden @ head.T / temperature, -1)
        token = logp.gather(-1, ids[..., None]).squeeze(-1) * batch.loss_mask_B_L.to(ctx.device)
        return TeacherScores(token_logprobs_B_L=token, hidden_B_L_H=hidden, lm_head_V_H=head, temperature=temperature)


@dataclass(frozen=True)
class Uniform:
    """Weight 1 on every trained token."""

    def __call__(self, batch, scores) -> Credit:
        return Credit(weights_B_L=batch.loss_mask_B_L.float())


def exact(ctx, batch) -> torch.Tensor:
    """Reward 1 where the completion is the reference."""
    lens = batch.attention_mask_B_L.sum(-1)
    return torch.tensor([
        ctx.task.verify(p, batch.input_ids_B_L[i, int(batch.prompt_lens_B[i]) : int(lens[i])].tolist())
        for i, p in enumerate(batch.prompts)
    ])


@hookimpl
def opd_add_options(register):
    register("toy", ToyOptions)


@hookimpl
def opd_register_tasks(register):
    register("count", CountTask, default=True)


@hookimpl
def opd_register_samplers(register):
    register("sample", SampleFromStudent, default=True)
    register("reference", Reference)


@hookimpl
def opd_register_scorers(register):
    register("bigram", BigramTeacher, default=True)


@hookimpl
def opd_register_credit_schemes(register):
    register("uniform", Uniform, default=True)


@hookimpl
def opd_register_verifiers(register):
    register("exact", exact)


@hookimpl(trylast=True)
def opd_loss(ctx, batch, scores, credit, student):
    temperature = student.temperature
    s = torch.log_softmax(student.hidden_B_L_H @ student.lm_head_V_H.T / temperature, -1)
    t = torch.log_softmax(scores.hidden_B_L_H @ scores.lm_head_V_H.T / temperature, -1).to(s.device)
    kl_B_L = (s.exp() * (s - t)).sum(-1) * credit.weights_B_L.to(s.device)
    return LossOutput(loss_sum=kl_B_L.sum(), num_tokens=int(batch.loss_mask_B_L.sum()),
                      metrics={"reverse_kl": float(kl_B_L.detach().sum())})


@hookimpl
def opd_preflight(ctx):
    return {"toy_vocab": VOCAB}
