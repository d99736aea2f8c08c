"""Episodes as one ``RolloutBatch``: exact ids, who wrote each token, which tokens carry loss.

The environment's tokens (observations, markers, the ``<eos>`` that closes a truncated action)
are ``PRODUCER_ENV`` and never carry loss; action tokens carry loss when their writer is in
``train_on``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from opdplug.types import PRODUCER_ENV, PRODUCER_PAD, PRODUCER_PROMPT, Prompt, RolloutBatch

from .episodes import PRODUCER_CODES, Episode, check_producer


def episodes_to_batch(
    episodes: Sequence[Episode],
    *,
    train_on: Sequence[str] = ("student",),
    pad_id: int = 0,
    prompts: Optional[Sequence[Prompt]] = None,
) -> RolloutBatch:
    """A right-padded ``RolloutBatch`` of episodes.

    :param train_on: producers whose action tokens (``<eos>`` included) carry loss:
        ``"student"``, ``"teacher"`` and/or ``"expert"``. Environment tokens never do.
    :param pad_id: id of the right padding.
    :param prompts: the ``Prompt`` of each episode (e.g. the task's); default ``Episode.prompt()``.
        Their ``prompt_ids`` must equal the episodes' ``prompt_ids``.
    :return: ``producer_B_L`` is PROMPT on ``<bos>``, ENV on observations, markers and closing
        ``<eos>``s, STUDENT/TEACHER on actions (experts count as TEACHER); ``turn_ids_B_L`` the
        turn of each token (-1 on padding); ``rewards_B`` 1.0 on success; ``truncated_B`` the
        episodes cut off by a limit; ``on_policy_B`` episodes whose every action is the student's;
        ``prompt_lens_B`` the first observation's length with ``<bos>`` and marker.
    """
    if not episodes:
        raise ValueError("episodes_to_batch needs at least one episode")
    for name in train_on:
        check_producer(name)
    if prompts is None:
        prompts = [e.prompt() for e in episodes]
    if len(prompts) != len(episodes):
        raise ValueError(f"{len(prompts)} prompts for {len(episodes)} episodes")
    for p, e in zip(prompts, episodes):
        if tuple(p.prompt_ids) != e.prompt_ids:
            raise ValueError(f"a prompt's ids differ from its episode's first observation ({e.env} seed {e.seed})")
    B, L = len(episodes), max(len(e.token_ids) for e in episodes)
    ids_B_L = torch.full((B, L), pad_id, dtype=torch.long)
    attn_B_L = torch.zeros(B, L, dtype=torch.long)
    loss_B_L = torch.zeros(B, L, dtype=torch.long)
    prod_B_L = torch.full((B, L), PRODUCER_PAD, dtype=torch.long)
    turn_B_L = torch.full((B, L), -1, dtype=torch.long)
    lps_B_L = torch.zeros(B, L, dtype=torch.float32)
    for b, e in enumerate(episodes):
        n = len(e.token_ids)
        ids_B_L[b, :n] = torch.tensor(e.token_ids, dtype=torch.long)
        attn_B_L[b, :n] = 1
        pos = len(e.bos_ids)
        prod_B_L[b, :pos] = PRODUCER_PROMPT
        turn_B_L[b, :pos] = 0
        for t, turn in enumerate(e.turns):
            spans = ((turn.observation_ids, PRODUCER_ENV, None), (turn.action_ids, PRODUCER_CODES[turn.producer], turn),
                     (turn.closing_ids, PRODUCER_ENV, None))
            for span, code, action in spans:
                end = pos + len(span)
                prod_B_L[b, pos:end] = code
                turn_B_L[b, pos:end] = t
                if action is not None:
                    lps_B_L[b, pos:end] = torch.tensor(action.action_logprobs, dtype=torch.float32)
                    if action.producer in train_on:
                        loss_B_L[b, pos:end] = 1
                pos = end
    return RolloutBatch(
        input_ids_B_L=ids_B_L,
        attention_mask_B_L=attn_B_L,
        loss_mask_B_L=loss_B_L,
        producer_B_L=prod_B_L,
        sampling_logprobs_B_L=lps_B_L,
        prompt_lens_B=torch.tensor([len(e.prompt_ids) for e in episodes], dtype=torch.long),
        turn_ids_B_L=turn_B_L,
        rewards_B=torch.tensor([1.0 if e.success else 0.0 for e in episodes], dtype=torch.float32),
        truncated_B=torch.tensor([e.truncated for e in episodes], dtype=torch.bool),
        on_policy_B=torch.tensor([bool(e.turns) and all(t.producer == "student" for t in e.turns) for e in episodes]),
        prompts=tuple(prompts),
    )
