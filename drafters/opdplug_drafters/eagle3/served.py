"""Feature capture from a target served by SGLang: the same ``Batch`` as the local capture, with
the auxiliary hidden states and the target's distributions computed by the server.

``sglang_capture`` has the local capture's signature with an ``SGLangFeatureSource`` in place of
the target model, so the feature-capture (score) stage of an EAGLE-3 run can take either::

    source = served_source(["http://127.0.0.1:30000"], aux_layers, hidden_size=H)   # checks the server
    batch, logp = sglang_capture(source, ids_B_L, mask_B_L, loss_mask_B_L, aux_layers, d2t_ids)
    scores = served_feature_scores(source, rollout_batch, aux_layers, d2t_ids)      # a FeatureScores

Only the draft vocabulary's log-probs travel (``token_ids_logprob``), with the top-1 id: the TTT
loss needs the target's distribution renormalised over the draft vocabulary (a softmax over
those log-probs is exactly that), the argmax over the whole vocabulary, and the mass the draft
vocabulary holds (the sum of their probabilities). ``Batch.target_logits_B_L_Vd`` therefore holds
log-probs here, not logits: they differ by a per-position constant that nothing downstream sees
(every use is a softmax, a log-softmax or an argmax over the draft ids).

The server side (request, parsing, the server's flags) is ``opdplug_sglang.features``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from opdplug.errors import ConfigError

from .config import sglang_layer_ids


def _batch_class():
    # The Batch dataclass lives with the local capture (capture.py; ttt.py before that split).
    try:
        from .capture import Batch
    except ImportError:  # pragma: no cover - older layout
        from .ttt import Batch
    return Batch


def served_source(urls: Sequence[str], aux_layers: Sequence[int], *, hidden_size: int, batch_size: int = 8,
                  vocab_size: Optional[int] = None, check: bool = True, retry_budget_s: Optional[float] = None):
    """An ``SGLangFeatureSource`` for servers capturing HF hidden-state indices ``aux_layers``
    (SGLang ids one lower), checked at once (``check``: one line if a server is set up otherwise).
    ``retry_budget_s``: seconds a failing request is retried (default: the client's)."""
    try:
        from opdplug_sglang.client import RetryPolicy, SGLangClient
        from opdplug_sglang.features import SGLangFeatureSource
    except ImportError as exc:
        raise ConfigError(f"EAGLE-3 features from an SGLang server need opdplug-sglang "
                          f"(pip install -e integrations/sglang): {exc}") from None

    policy = RetryPolicy() if retry_budget_s is None else RetryPolicy(budget_s=float(retry_budget_s))
    source = SGLangFeatureSource(SGLangClient(list(urls), policy), sglang_layer_ids(aux_layers),
                                 len(aux_layers) * int(hidden_size), batch_size=batch_size, vocab_size=vocab_size)
    if check:
        source.check()
    return source


@torch.no_grad()
def sglang_capture(
    source, input_ids_B_L: torch.Tensor, attention_mask_B_L: torch.Tensor, loss_mask_B_L: torch.Tensor,
    aux_layers: Sequence[int], draft_to_target_Vd: torch.Tensor, *, token_logprobs: bool = False,
    device: Optional[torch.device] = None,
):
    """``capture.capture`` against a served target: ``(Batch, token_logprobs_B_L or None)``.

    :param source: an ``opdplug_sglang.features.SGLangFeatureSource`` (``served_source``).
    :param input_ids_B_L: right-padded rows (each row's real tokens first, as the rollouts are).
    :param token_logprobs: also return the target's log-prob of each token ``[B, L]`` (position t
        describes token t, 0 at t = 0), times ``loss_mask_B_L``, as the local capture does.
    :param device: where the tensors go (default: ``input_ids_B_L``'s device).
    """
    want = sglang_layer_ids(aux_layers)
    if list(source.layer_ids) != want:
        raise ConfigError(f"the SGLang feature source captures layer ids {source.layer_ids}; the head reads aux_layers "
                          f"{list(aux_layers)} (SGLang ids {want})")
    device = device or input_ids_B_L.device
    ids, mask = input_ids_B_L.cpu(), attention_mask_B_L.cpu().long()
    lengths = mask.sum(-1)
    B, L = ids.shape
    if not torch.equal(mask, (torch.arange(L)[None] < lengths[:, None]).long()) or int(lengths.min()) < 2:
        raise ConfigError("sglang_capture needs right-padded rows of at least 2 tokens (real tokens first)")
    draft_ids = [int(i) for i in draft_to_target_Vd.tolist()]
    rows = [ids[b, :int(lengths[b])].tolist() for b in range(B)]
    got = source.fetch(rows, draft_ids)
    A, Vd = source.width, len(draft_ids)
    features = torch.zeros(B, L, A)
    logp_Vd = torch.zeros(B, L, Vd)
    argmax = torch.zeros(B, L, dtype=torch.long)
    token_lp = torch.zeros(B, L)
    for b, (row, seq) in enumerate(zip(rows, got)):
        n = len(row)
        features[b, :n], logp_Vd[b, :n], argmax[b, :n], token_lp[b, :n] = (
            seq.features_L_A, seq.chosen_logprobs_L_C, seq.argmax_L, seq.token_logprobs_L)
    mass = logp_Vd.exp().sum(-1) * mask  # padding positions: 0 (never read)
    batch = _batch_class()(
        input_ids_B_L.to(device), attention_mask_B_L.to(device), loss_mask_B_L.to(device), features.to(device),
        logp_Vd.to(device), argmax.to(device), mass.to(device),
    )
    if not token_logprobs:
        return batch, None
    return batch, (token_lp * loss_mask_B_L.cpu()).to(device)


def served_feature_scores(source, batch, aux_layers: Sequence[int], draft_to_target_Vd: torch.Tensor):
    """``capture.feature_scores`` against a served target: the score stage of an EAGLE-3 run
    whose target is an SGLang server (a ``FeatureScores`` over a ``RolloutBatch``)."""
    from .capture import FeatureScores

    captured, logp_B_L = sglang_capture(source, batch.input_ids_B_L, batch.attention_mask_B_L, batch.loss_mask_B_L,
                                        aux_layers, draft_to_target_Vd, token_logprobs=True)
    return FeatureScores(token_logprobs_B_L=logp_B_L, captured=captured)
