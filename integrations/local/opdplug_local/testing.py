"""Pytest fixtures of the local backend (registered through its ``pytest11`` entry point):

* ``fake_rollout``  random but well-formed ``RolloutBatch`` + dense ``TeacherScores``.
* ``tiny_models``   a tiny CPU teacher and student (built and saved once per session) on the
  built-in task: ``tiny_models.teacher_dir``, ``.student_dir``, ``.tokenizer``.

Imports stay inside the fixtures: pytest loads this module for every test run in the
environment, and must not pay for torch unless a fixture is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


def make_fake_rollout(B: int = 3, prompt_len: int = 4, completion_len: int = 6, V: int = 11, H: int = 8, seed: int = 0):
    """A random ``RolloutBatch`` (ragged completions, right-padded) and dense ``TeacherScores``.

    Returns ``(batch, scores, student_hidden_B_L_H, student_lm_head_V_H)``; the student tensors
    require grad so a loss can be backpropagated.
    """
    import torch

    from opdplug_local.lmhead import chunked_token_logprobs
    from opdplug_local.models import collate
    from opdplug.types import PRODUCER_STUDENT, Prompt, TeacherScores

    g = torch.Generator().manual_seed(seed)
    prompts, completions, logprobs = [], [], []
    for b in range(B):
        n = max(1, completion_len - b)
        prompts.append(Prompt(prompt_ids=tuple(torch.randint(1, V, (prompt_len,), generator=g).tolist())))
        completions.append(torch.randint(1, V, (n,), generator=g).tolist())
        logprobs.append((-torch.rand(n, generator=g) * 3).tolist())
    batch = collate(prompts, completions, producer=PRODUCER_STUDENT, pad_id=0, logprobs=logprobs, on_policy=True)
    L = batch.input_ids_B_L.shape[1]
    t_hidden = torch.randn(B, L, H, generator=g)
    t_head = torch.randn(V, H, generator=g)
    mask = batch.loss_mask_B_L.bool()
    token_lp = torch.zeros(B, L)
    token_lp[mask] = chunked_token_logprobs(t_hidden[mask], t_head, batch.input_ids_B_L[mask])
    scores = TeacherScores(token_logprobs_B_L=token_lp, hidden_B_L_H=t_hidden, lm_head_V_H=t_head)
    s_hidden = torch.randn(B, L, H, generator=g).requires_grad_(True)
    s_head = torch.randn(V, H, generator=g).requires_grad_(True)
    return batch, scores, s_hidden, s_head


@pytest.fixture
def fake_rollout():
    return make_fake_rollout


@dataclass(frozen=True)
class TinyModels:
    teacher_dir: Path
    """A tiny (untrained) Llama saved with its tokenizer."""
    student_dir: Path
    """A smaller tiny Llama with the same tokenizer."""
    tokenizer: object


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    from opdplug_local import tiny
    from opdplug_local.tasks import SumChain

    root = tmp_path_factory.mktemp("opd_tiny_models")
    tokenizer = tiny.build_tokenizer(SumChain().words())
    teacher = tiny.build_model("tiny", tokenizer, seed=1)
    student = tiny.build_model("tiny", tokenizer, seed=2)
    tiny.save_pretrained_pair(teacher, tokenizer, root / "teacher")
    tiny.save_pretrained_pair(student, tokenizer, root / "student")
    return TinyModels(root / "teacher", root / "student", tokenizer)
