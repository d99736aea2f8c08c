"""The projection of teacher tokens onto student tokens (``xtok_project``): which student token
writes a teacher token's next bytes, given what the student already wrote inside it; and the
support built on it, checked against a distribution computed by hand."""
from __future__ import annotations

import torch

from opdplug.types import PRODUCER_STUDENT, RolloutBatch, StudentOutputs, TeacherScores
from opdplug_token.crosstok.scorer import Projection, _cover
from opdplug_token.crosstok.supports import ProjectedTopK
from opdplug_token.divergences import ReverseKL


class Vocab:
    """Token bytes by id, the interface ``Projection`` reads (``of``, ``special``)."""

    def __init__(self, pieces, special=()):
        self.pieces, self.special = pieces, set(special)

    def of(self, i):
        return self.pieces[i]


STUDENT = Vocab([b" ", b"5", b"4", b" 5", b"5 4", b"END"], special={5})
TEACHER = Vocab([b" 54", b" 5", b"4", b".", b"<eot>", b" 6"], special={4})


def projection():
    return Projection(STUDENT, TEACHER, student_end=5, teacher_end=4, student_vocab=6)


def test_a_teacher_token_goes_to_the_longest_student_token_that_begins_it():
    proj = projection()
    assert proj(0, b"") == 3  # " 54" is written first as " 5"
    assert proj(1, b"") == 3  # " 5" is " 5"
    assert proj(5, b"") == 0  # " 6": the student has no " 6", so " " comes first


def test_inside_a_teacher_token_only_entries_that_continue_the_written_bytes_count():
    proj = projection()
    assert proj(0, b" 5") == 2  # " 54" after " 5" continues with "4"
    assert proj(1, b" 5") == -1  # " 5" ends exactly where the student is: its continuation is elsewhere
    assert proj(5, b" 5") == -1  # " 6" does not continue " 5"
    assert proj(2, b"4") == -1


def test_end_of_turn_maps_to_the_students_only_at_a_boundary():
    proj = projection()
    assert proj(4, b"") == 5
    assert proj(4, b" ") == -1


def test_cover_names_the_teacher_token_under_each_student_token_and_the_bytes_before_it():
    text = b" 54."
    # student " 5" | "4" | "."   teacher " 54" | "."
    assert _cover([2, 3, 4], [3, 4], text) == ((0, b""), (0, b" 5"), (1, b""))
    # student " 5" | "4." (crosses)  teacher " 54" | "."
    assert _cover([2, 4], [3, 4], text) == ((0, b""), (0, b" 5"))
    assert _cover([2, None], [3, 4], text) == (None, None)


def test_the_support_compares_the_student_with_the_renormalised_projected_teacher():
    torch.manual_seed(0)
    V, H, K = 6, 4, 3
    hidden = torch.randn(1, 2, H, dtype=torch.float64)
    head = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    student = StudentOutputs(hidden_B_L_H=hidden, lm_head_V_H=head, temperature=1.0)
    batch = RolloutBatch(input_ids_B_L=torch.tensor([[1, 2]]), attention_mask_B_L=torch.ones(1, 2, dtype=torch.long),
                         loss_mask_B_L=torch.tensor([[0, 1]]), producer_B_L=torch.full((1, 2), PRODUCER_STUDENT),
                         sampling_logprobs_B_L=torch.zeros(1, 2), prompt_lens_B=torch.tensor([1]))
    t_lp = torch.log(torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.2, 0.2]]], dtype=torch.float64))
    tail = torch.log(torch.tensor([[1.0, 0.1]], dtype=torch.float64))
    proj = torch.tensor([[[-1, -1, -1], [2, 2, -1]]])  # two entries land on student id 2, one is dropped
    scores = TeacherScores(token_logprobs_B_L=torch.zeros(1, 2), topk_ids_B_L_K=torch.zeros(1, 2, K, dtype=torch.long),
                           topk_logprobs_B_L_K=t_lp, tail_logmass_B_L=tail, topk_student_ids_B_L_K=proj,
                           vocab_map_2_M=torch.zeros(2, 1, dtype=torch.long))
    mask = batch.loss_mask_B_L.bool()
    out = ProjectedTopK()(ReverseKL(), student, scores, batch, mask, top_k=K)
    # By hand: teacher (id 2: 0.7, rest: 0.1) / 0.8; student (id 2, rest).
    logq = torch.log_softmax(hidden[0, 1] @ head.T, -1)
    q = torch.stack([logq[2].exp(), 1 - logq[2].exp()])
    p = torch.tensor([0.7 / 0.8, 0.1 / 0.8], dtype=torch.float64)
    expected = (q * (q.log() - p.log())).sum()
    torch.testing.assert_close(out.values_B_L[0, 1], expected.to(out.values_B_L.dtype), rtol=1e-6, atol=1e-9)
    assert float(out.values_B_L[0, 0].detach()) == 0.0


def test_with_the_students_tokenizer_its_own_first_token_wins_over_the_longest_prefix():
    student = Vocab([b" ", b"The", b" T", b"he", b"END"], special={4})
    teacher = Vocab([b" The", b"<eot>"], special={1})
    writes = {" The": [0, 1], "he": [3]}  # this student's pre-tokenizer splits the space off
    proj = Projection(student, teacher, student_end=4, teacher_end=1, student_vocab=5, encode=lambda t: writes.get(t, []))
    assert proj(0, b"") == 0  # " ", as the student writes " The"; the longest prefix would be " T"
    assert Projection(student, teacher, 4, 1, 5)(0, b"") == 2  # without the tokenizer: the longest prefix
    assert proj(0, b" T") == 3  # the rest "he"
