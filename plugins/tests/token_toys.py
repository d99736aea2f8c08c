"""Toy micro-batches for the opdplug-token maths tests (tiny, float64, deterministic).

A uniquely named helper module rather than conftest.py, so tests import it by name whatever
other conftest files are collected alongside. ``one_thread`` is an autouse fixture: a test
module enables it with ``from token_toys import one_thread  # noqa: F401``.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from opdplug.types import PRODUCER_PAD, PRODUCER_PROMPT, PRODUCER_STUDENT, RolloutBatch, StudentOutputs, TeacherScores


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread avoids OpenMP threads spinning against other
    work on a loaded 2-core machine (matmuls 50x slower otherwise). Restored after each test."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@dataclass
class Toy:
    batch: RolloutBatch
    student_hidden: torch.Tensor  # leaf, requires grad
    student_head: torch.Tensor  # leaf, requires grad
    teacher_hidden: torch.Tensor
    teacher_head: torch.Tensor
    temperature: float

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.loss_mask_B_L.bool()

    def student(self) -> StudentOutputs:
        return StudentOutputs(hidden_B_L_H=self.student_hidden, lm_head_V_H=self.student_head, temperature=self.temperature)

    def student_logp(self) -> torch.Tensor:
        """Unchunked reference: [B, L, V] student log-probs at the temperature."""
        return torch.log_softmax(self.student_hidden @ self.student_head.T / self.temperature, -1)

    def teacher_logp(self) -> torch.Tensor:
        return torch.log_softmax(self.teacher_hidden @ self.teacher_head.T / self.temperature, -1)

    def dense_scores(self, top_k: int = 0) -> TeacherScores:
        logp = self.teacher_logp().detach()
        tok = logp.gather(-1, self.batch.input_ids_B_L[..., None]).squeeze(-1) * self.mask
        kw = {}
        if top_k:
            top = logp.topk(top_k, -1)
            kw = dict(topk_ids_B_L_K=top.indices, topk_logprobs_B_L_K=top.values.float(),
                      tail_logmass_B_L=torch.log1p(-top.values.exp().sum(-1)).float())
        return TeacherScores(token_logprobs_B_L=tok, hidden_B_L_H=self.teacher_hidden, lm_head_V_H=self.teacher_head,
                             temperature=self.temperature, **kw)

    def sparse_scores(self, top_k: int, with_tail: bool = True) -> TeacherScores:
        logp = self.teacher_logp().detach()
        tok = logp.gather(-1, self.batch.input_ids_B_L[..., None]).squeeze(-1) * self.mask
        top = logp.topk(top_k, -1)
        tail = torch.log1p(-top.values.exp().sum(-1)) if with_tail else None
        return TeacherScores(token_logprobs_B_L=tok, topk_ids_B_L_K=top.indices, topk_logprobs_B_L_K=top.values,
                             tail_logmass_B_L=tail, temperature=self.temperature)


def make_toy(B=3, L=9, H=5, Ht=4, V=13, temperature=0.7, seed=0, dtype=torch.float64, empty_row=True) -> Toy:
    """B rows of length L (right-padded, different prompt lengths; row 2 has no trained token
    when ``empty_row``), random student/teacher hidden states and heads (teacher hidden size
    differs from the student's)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=gen)
    prompt_lens = torch.tensor([2, 3, 2][:B] + [2] * max(0, B - 3))
    lengths = torch.tensor([L, L - 2, 4][:B] + [L] * max(0, B - 3))
    pos = torch.arange(L)[None, :]
    attn = (pos < lengths[:, None]).long()
    loss_mask = ((pos >= prompt_lens[:, None]) & (pos < lengths[:, None])).long()
    if empty_row and B >= 3:
        loss_mask[2] = 0  # a row with no trained token (e.g. a filtered rollout)
    producer = torch.where(pos < prompt_lens[:, None], PRODUCER_PROMPT, PRODUCER_STUDENT)
    producer = torch.where(attn.bool(), producer, PRODUCER_PAD)
    sampling = (torch.rand(B, L, generator=gen) * -3.0) * loss_mask
    batch = RolloutBatch(
        input_ids_B_L=ids, attention_mask_B_L=attn, loss_mask_B_L=loss_mask, producer_B_L=producer,
        sampling_logprobs_B_L=sampling.float(), prompt_lens_B=prompt_lens,
        rewards_B=torch.rand(B, generator=gen),
    )
    sh = torch.randn(B, L, H, generator=gen, dtype=dtype).requires_grad_(True)
    sw = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_(True)
    th = torch.randn(B, L, Ht, generator=gen, dtype=dtype)
    tw = torch.randn(V, Ht, generator=gen, dtype=dtype)
    return Toy(batch, sh, sw, th, tw, temperature)
