"""The projection of teacher tokens onto student tokens (``xtok_project``): which student token
writes a teacher token's next bytes, given what the student already wrote inside it; and the
support built on it, checked against a distribution computed by hand."""
from __future__ import annotations

import torch

from opdplug.types import PRODUCER_STUDENT, RolloutBatch, SparseDistribution, StudentOutputs, TeacherScores
from opdplug_token.crosstok.projection import Projection
from opdplug_token.crosstok.spans import covering_tokens
from opdplug_token.crosstok.supports import ProjectedTopK
from opdplug_token.divergences import ReverseKL


class Vocab:
    """Token bytes by id, the interface ``Projection`` reads (``of``, ``special``)."""

    def __init__(self, pieces, special=()):
        self.pieces, self.special = pieces, set(special)

    def of(self, i):
        return self.pieces[i]


STUDENT = Vocab([b" ", b"5", b"4", b" 5", b"5 4", b"END", b"The", b" T", b"he"], special={5})
TEACHER = Vocab([b" 54", b" 5", b"4", b".", b"<eot>", b" 6", b" The"], special={4})
WRITES = {" 54": [3, 2], " 5": [3], "4": [2], ".": [], " 6": [0], " The": [0, 6]}  # how this student writes each


def projection(encode=True):
    return Projection(STUDENT, TEACHER, student_end=5, teacher_end=4, student_vocab=9,
                      encode=(lambda text: WRITES.get(text, [])) if encode else None)


def test_a_teacher_token_begins_with_the_first_token_the_student_writes_for_it():
    proj = projection()
    assert proj.next_token(0, 0) == 3  # " 54" is written " 5" + "4"
    assert proj.next_token(5, 0) == 0  # " 6": the student has no " 6", so " " comes first
    assert proj.next_token(6, 0) == 0  # " The" is " " + "The" for this student, though " T" exists
    assert projection(encode=False).next_token(6, 0) == 7  # without its tokenizer: the longest prefix " T"


def test_from_an_offset_only_where_the_student_has_a_boundary_there():
    proj = projection()
    assert proj.next_token(0, 2) == 2  # " 54" after " 5" goes on with "4"
    assert proj.next_token(1, 2) == -1  # " 5" ends there
    assert proj.next_token(6, 1) == 6  # " The" after " " is "The"
    assert proj.next_token(6, 2) == -1  # no student boundary after " T"


def test_entries_keep_only_teacher_tokens_that_continue_the_written_bytes():
    proj = projection()
    entries = proj.entries([0, 1, 5, 4], [-0.1, -2.0, -3.0, -4.0], b" 5")
    assert entries == [(2, -0.1)]
    assert proj.entries([0, 4], [-0.1, float("-inf")], b"") == [(3, -0.1)]


def test_end_of_turn_maps_to_the_students_only_at_a_boundary():
    proj = projection()
    assert proj.next_token(4, 0) == 5
    assert proj.next_token(4, 1) == -1


def test_cover_names_the_teacher_token_under_each_student_token_and_the_bytes_before_it():
    text = b" 54."
    # student " 5" | "4" | "."   teacher " 54" | "."
    assert covering_tokens([2, 3, 4], [3, 4], text) == ((0, b""), (0, b" 5"), (1, b""))
    # student " 5" | "4." (crosses)  teacher " 54" | "."
    assert covering_tokens([2, 4], [3, 4], text) == ((0, b""), (0, b" 5"))
    assert covering_tokens([2, None], [3, 4], text) == (None, None)


def test_the_support_compares_the_student_with_the_renormalised_projected_teacher():
    torch.manual_seed(0)
    V, H, K = 6, 4, 3
    hidden = torch.randn(1, 2, H, dtype=torch.float64)
    head = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    student = StudentOutputs(hidden_B_L_H=hidden, lm_head_V_H=head, temperature=1.0)
    batch = RolloutBatch(input_ids_B_L=torch.tensor([[1, 2]]), attention_mask_B_L=torch.ones(1, 2, dtype=torch.long),
                         loss_mask_B_L=torch.tensor([[0, 1]]), producer_B_L=torch.full((1, 2), PRODUCER_STUDENT),
                         sampling_logprobs_B_L=torch.zeros(1, 2), prompt_lens_B=torch.tensor([1]))
    mass = torch.log(torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.2, 0.2]]], dtype=torch.float64))
    tail = torch.log(torch.tensor([[1.0, 0.1]], dtype=torch.float64))
    ids = torch.tensor([[[-1, -1, -1], [2, 2, -1]]])  # two entries land on student id 2, one column unused
    scores = TeacherScores(token_logprobs_B_L=torch.zeros(1, 2), topk_ids_B_L_K=torch.zeros(1, 2, K, dtype=torch.long),
                           topk_logprobs_B_L_K=mass, vocab_map_2_M=torch.zeros(2, 1, dtype=torch.long),
                           student_distribution=SparseDistribution(ids, mass, tail))
    mask = batch.loss_mask_B_L.bool()
    out = ProjectedTopK()(ReverseKL(), student, scores, batch, mask, top_k=K)
    # By hand: teacher (id 2: 0.7, rest: 0.1) / 0.8; student (id 2, rest).
    logq = torch.log_softmax(hidden[0, 1] @ head.T, -1)
    q = torch.stack([logq[2].exp(), 1 - logq[2].exp()])
    p = torch.tensor([0.7 / 0.8, 0.1 / 0.8], dtype=torch.float64)
    expected = (q * (q.log() - p.log())).sum()
    torch.testing.assert_close(out.values_B_L[0, 1], expected.to(out.values_B_L.dtype), rtol=1e-6, atol=1e-9)
    assert float(out.values_B_L[0, 0].detach()) == 0.0
