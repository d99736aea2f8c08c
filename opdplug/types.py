"""The data model every hook shares.

Small frozen dataclasses, one docstring per field. Tensor names carry their shape as a suffix:
``B`` batch rows, ``L`` full sequence length (prompt + completion, right-padded), ``K`` top-k width,
``V`` vocabulary, ``H`` hidden size. Position ``t`` of a ``*_B_L`` tensor describes token
``input_ids_B_L[:, t]`` (the token *at* t, predicted from positions < t), never the next one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch

# Who produced a token. Stored per position in ``RolloutBatch.producer_B_L``.
PRODUCER_PAD = -1
PRODUCER_PROMPT = 0
PRODUCER_STUDENT = 1
PRODUCER_TEACHER = 2
PRODUCER_ENV = 3
PRODUCER_REFERENCE = 4
PRODUCER_NAMES = {
    PRODUCER_PAD: "pad",
    PRODUCER_PROMPT: "prompt",
    PRODUCER_STUDENT: "student",
    PRODUCER_TEACHER: "teacher",
    PRODUCER_ENV: "env",
    PRODUCER_REFERENCE: "reference",
}


@dataclass(frozen=True)
class Prompt:
    """One task instance as handed to a rollout."""

    prompt_ids: tuple[int, ...]
    """Exact token ids of the prompt (BOS included when the tokenizer adds one)."""
    reference_ids: tuple[int, ...] = ()
    """A reference completion (ground truth or teacher sample), EOS included; empty if none."""
    reference_mask: tuple[int, ...] = ()
    """1 on the reference tokens to train on, 0 on those it only conditions on (the user and
    tool turns between the assistant turns of a multi-turn conversation), one per
    ``reference_ids``; empty: train on every reference token."""
    privileged_ids: tuple[int, ...] = ()
    """Extra context only a privileged teacher sees (e.g. the answer), placed before the prompt."""
    privileged_prompt_ids: tuple[int, ...] = ()
    """The whole prompt as a privileged teacher sees it, when the context has to go through a
    chat template (e.g. a system turn holding the reference answer): replaces
    ``privileged_ids + prompt_ids`` for that teacher. Empty: use ``privileged_ids``."""
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    """Task-specific data a verifier needs (e.g. the correct answer). Never fed to a model."""
    row: int = field(default=-1, compare=False)
    """Index of this prompt in its optimizer step's global batch (all processes, all
    micro-batches), set by the training loop; -1 elsewhere. Per-row sampling seeds derive from
    it (``RunContext.row_seeds``), so a row draws the same tokens whichever process or
    micro-batch it lands in."""
    group: int = field(default=-1, compare=False)
    """Index of this prompt's sampling group in its optimizer step (``rollout.samples_per_prompt``
    consecutive rows share the prompt and the group), set by the training loop; -1 elsewhere.
    Group-relative credit schemes normalise rewards within a group."""


@dataclass(frozen=True)
class RolloutBatch:
    """Token sequences to train on, with who wrote every token. Right-padded to a common length."""

    input_ids_B_L: torch.Tensor
    """Exact token ids: prompt then completion, then padding (long)."""
    attention_mask_B_L: torch.Tensor
    """1 on real tokens, 0 on padding (long)."""
    loss_mask_B_L: torch.Tensor
    """1 on tokens the student is trained on (completion tokens it could have produced), else 0."""
    producer_B_L: torch.Tensor
    """Who produced each token, one of the ``PRODUCER_*`` codes (long)."""
    sampling_logprobs_B_L: torch.Tensor
    """Log-prob of each token under the policy that sampled it, at the rollout temperature;
    0 where not sampled (prompt, padding, reference text). Float32."""
    prompt_lens_B: torch.Tensor
    """Number of prompt tokens per row (long); the completion starts at this index."""
    turn_ids_B_L: Optional[torch.Tensor] = None
    """Turn index per token for multi-turn episodes (long), or None for single-turn."""
    rewards_B: Optional[torch.Tensor] = None
    """Outcome reward per sequence from a verifier (float32), or None."""
    truncated_B: Optional[torch.Tensor] = None
    """True where the completion hit ``max_new_tokens`` without EOS (bool), or None."""
    on_policy_B: Optional[torch.Tensor] = None
    """True where the student sampled the completion with its current weights (bool), or None."""
    prompts: tuple[Prompt, ...] = ()
    """The prompts the rows came from, in order (for verifiers and privileged teachers)."""
    key_step_B_L: Optional[torch.Tensor] = None
    """True on the action tokens of key steps (bool): actions a teacher wrote in place of a
    student's located mistake (SCoRe-style correction), for credit schemes that weight them;
    None when the sampler marks none."""

    @property
    def batch_size(self) -> int:
        return int(self.input_ids_B_L.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask_B_L.sum().item())

    def replace(self, **changes: Any) -> "RolloutBatch":
        """A copy with some fields changed (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)

    def select(self, rows: torch.Tensor) -> "RolloutBatch":
        """The batch restricted to ``rows`` (bool mask or index tensor over B)."""
        idx = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
        take = lambda t: None if t is None else t[idx]  # noqa: E731
        keep = idx.tolist()
        return RolloutBatch(
            input_ids_B_L=self.input_ids_B_L[idx],
            attention_mask_B_L=self.attention_mask_B_L[idx],
            loss_mask_B_L=self.loss_mask_B_L[idx],
            producer_B_L=self.producer_B_L[idx],
            sampling_logprobs_B_L=self.sampling_logprobs_B_L[idx],
            prompt_lens_B=self.prompt_lens_B[idx],
            turn_ids_B_L=take(self.turn_ids_B_L),
            rewards_B=take(self.rewards_B),
            truncated_B=take(self.truncated_B),
            on_policy_B=take(self.on_policy_B),
            prompts=tuple(self.prompts[i] for i in keep) if self.prompts else (),
            key_step_B_L=take(self.key_step_B_L),
        )


@dataclass(frozen=True)
class SparseDistribution:
    """A distribution over the student's vocabulary given as a few weighted ids per position."""

    ids_B_L_J: torch.Tensor
    """Student token ids (long; -1 where a column is unused). An id may appear more than once:
    its masses add up."""
    logmass_B_L_J: torch.Tensor
    """Log of the mass each column puts on its id (float32; -inf where unused)."""
    tail_logmass_B_L: torch.Tensor
    """Log of the mass on no listed id (float32). Masses and tail are normalised together by
    whoever reads them, so they need not sum to one."""


@dataclass(frozen=True)
class TeacherScores:
    """The teacher's view of a ``RolloutBatch``. Sparse by default; dense only where local."""

    token_logprobs_B_L: torch.Tensor
    """Teacher log-prob of the token at each position (float32; 0 where ``loss_mask`` is 0)."""
    topk_ids_B_L_K: Optional[torch.Tensor] = None
    """Teacher's top-k token ids per position (long), or None when not requested."""
    topk_logprobs_B_L_K: Optional[torch.Tensor] = None
    """Teacher log-probs of ``topk_ids_B_L_K`` (float32)."""
    tail_logmass_B_L: Optional[torch.Tensor] = None
    """log(1 - sum exp(topk_logprobs)): the teacher mass outside its top-k (float32)."""
    hidden_B_L_H: Optional[torch.Tensor] = None
    """Local teachers only: final hidden states, aligned so that ``hidden_B_L_H[:, t]`` predicts
    token t (i.e. already shifted); rows off the loss mask may be zeros. With ``lm_head_V_H`` this
    gives full logits chunk by chunk without ever holding [B, L, V]."""
    lm_head_V_H: Optional[torch.Tensor] = None
    """Local teachers only: the output projection matching ``hidden_B_L_H``."""
    temperature: float = 1.0
    """Temperature the log-probs above were computed at (logits divided by it)."""
    chosen_ids_B_L_K: Optional[torch.Tensor] = None
    """Ids the requester chose per position for the teacher to score (long), e.g. the student's
    own top-k taken at rollout time by a server; None when none were asked for."""
    chosen_logprobs_B_L_K: Optional[torch.Tensor] = None
    """Teacher log-probs of ``chosen_ids_B_L_K`` (float32; -inf where a column is unused)."""
    scored_by_teacher: bool = True
    """False when no teacher did the scoring (the student scored itself, or no scorer ran):
    accounting counts teacher work only where this is True."""
    token_groups_B_L: Optional[torch.Tensor] = None
    """Positions the teacher could only score together (long, one id per group, -1 off-mask): a
    teacher with another tokenizer whose token spans cross the student's. ``token_logprobs_B_L``
    then splits each group's teacher log-prob evenly over its positions (sums stay exact), and a
    sampled-token loss is taken per group. None: every token was scored alone."""
    scored_B_L: Optional[torch.Tensor] = None
    """False on trained tokens the teacher could not score (bool; e.g. a row whose text the
    teacher's tokenizer could not align): the loss leaves them out. None: all were scored."""
    distribution_B_L: Optional[torch.Tensor] = None
    """True where the top-k / dense fields describe the distribution of the student's token at
    that position (bool; with another tokenizer, where the student's token starts on a boundary
    both tokenizations share). None: everywhere."""
    vocab_map_2_M: Optional[torch.Tensor] = None
    """A teacher with another vocabulary (long): row 0 student ids, row 1 the teacher id with the
    identical string. The top-k ids and the dense lm-head are then in the teacher's vocabulary,
    and only supports that map vocabularies read them. None: one shared vocabulary."""
    student_distribution: Optional["SparseDistribution"] = None
    """A teacher with another vocabulary: its next-token distribution re-expressed over the
    student's vocabulary at each position, given the text the student has written (see
    ``SparseDistribution``). None: not computed."""

    @property
    def is_dense(self) -> bool:
        return self.hidden_B_L_H is not None and self.lm_head_V_H is not None

    def replace(self, **changes: Any) -> "TeacherScores":
        """A copy with some fields changed (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Credit:
    """Per-token weights and advantages from ``opd_credit``."""

    weights_B_L: torch.Tensor
    """Non-negative weight of each token in the loss (float32); 0 outside the loss mask.
    The loss is normalized by the global count of loss tokens, not by the sum of weights."""
    advantages_B_L: Optional[torch.Tensor] = None
    """Per-token advantage for policy-gradient style updates (float32, no grad), or None
    when the update backpropagates the divergence directly."""
    metrics: dict = field(default_factory=dict, compare=False)
    """Scalar diagnostics the scheme wants logged."""


@dataclass(frozen=True)
class StudentOutputs:
    """The student's forward pass on a ``RolloutBatch``, with gradients."""

    hidden_B_L_H: torch.Tensor
    """Final hidden states, already shifted: ``hidden_B_L_H[:, t]`` predicts token t (position 0
    is a zero row that never carries loss; other rows off the loss mask may be zeros too)."""
    lm_head_V_H: torch.Tensor
    """The student's output projection (a parameter: gradients flow into it)."""
    temperature: float = 1.0
    """Temperature the loss compares distributions at; the same one rollouts sampled with."""


@dataclass(frozen=True)
class LossOutput:
    """What ``opd_loss`` returns for one micro-batch."""

    loss_sum: torch.Tensor
    """Sum over loss tokens of the per-token loss (scalar with grad). The loop divides by the
    global token count of the whole optimizer step, so micro-batching does not change it."""
    num_tokens: int
    """Number of loss tokens summed in ``loss_sum``."""
    metrics: dict = field(default_factory=dict)
    """Token-summed diagnostics, e.g. {"reverse_kl": sum over tokens}; the loop divides by the
    global token count before logging. Keys ending in ``_mean`` are logged as given."""


@dataclass(frozen=True)
class LoadedModels:
    """What ``opd_load_models`` returns."""

    student: torch.nn.Module
    """The student, trainable (possibly LoRA-wrapped), not yet prepared by accelerate."""
    tokenizer: Any
    """The student's tokenizer; every token id in a run is one of its ids."""
    teacher: Optional[torch.nn.Module] = None
    """A local teacher, frozen and on the run's device, or None when the scorer needs none."""


@runtime_checkable
class Task(Protocol):
    """A prompt source, as ``opd_register_tasks`` factories build it."""

    def prompts(self, n: int, *, seed: int, split: str = "train", length: Optional[int] = None) -> list[Prompt]:
        """``n`` prompts of ``split`` ("train" or "eval"), deterministic in ``seed``."""

    def max_new_tokens(self, length: int) -> int:
        """The completion budget for prompts of ``length``."""

    def verify(self, prompt: Prompt, completion_ids: Sequence[int]) -> float:
        """The outcome reward of a completion (1.0 right, 0.0 wrong); never raises."""


class Component(Protocol):
    """The optional lifecycle of a registered component. Implement any of the three; the loop
    calls what is there.

    * ``setup(ctx)``: the models are loaded (called once, before ``opd_configure``): connect to
      servers, check vocabularies, allocate.
    * ``metrics() -> dict``: scalars merged into every optimizer step's metrics.
    * ``close()``: the run is ending, normally or not: release what ``setup`` took.
    """

    def setup(self, ctx: Any) -> None: ...

    def metrics(self) -> dict: ...

    def close(self) -> None: ...
