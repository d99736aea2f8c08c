"""Exact speculative decoding (Leviathan et al. 2023; Chen et al. 2023) and its measurements.

One round, per row: the drafter proposes ``k`` tokens ``d_1..d_k`` drawn from ``q_1..q_k``; the
target scores the row's last token and the ``k`` drafts in ONE forward (``k + 1`` positions,
distributions ``p_1..p_{k+1}``); draft ``j`` is accepted with probability
``min(1, p_j(d_j) / q_j(d_j))``, in order; at the first rejection the row emits a token drawn
from ``normalize(max(0, p_j - q_j))`` instead; when all ``k`` are accepted it emits a bonus
token drawn from ``p_{k+1}``. Each round thus emits between 1 and ``k + 1`` tokens, and the
emitted sequence has exactly the target's sampling distribution. At temperature 0 (greedy)
``p`` and ``q`` are one-hot on the argmax: a draft is accepted iff it is the target's argmax,
and the output equals target-only greedy decoding token for token.

The target's KV cache (``kvcache.RaggedLlama``: the lean forward of ``opdplug_local.fastpath`` with
per-row lengths) holds every position but the row's last token; a round feeds ``k + 1`` tokens
and is rolled back to the accepted ones (``crop``), so rows advance by different amounts in
the same batch without padding between them. A drafter with ``feature_layers`` also receives
the target's hidden states entering those layers at every position it has computed (see
``base.py``).

Rows that finish (EOS or budget) stay in the batch with their sequence frozen until every row
is done: on a CPU a forward of a few rows costs about what one row costs, and target-only
decoding (``generate_target_only``, the speed baseline, on the same forward machinery) does
the same.

``measure`` gives what a serving engineer asks first (a ``SpecReport``, see ``acceptance.py`` for
the counts behind it): acceptance length per verify forward (bonus token included, as SGLang's
``spec_accept_length``), acceptance rate per draft position, the rates predicted by
``1 - TVD(p, q)``, the closed form ``(1 - b^(k+1)) / (1 - b)``, and wall-clock tokens per second
against target-only decoding, alternated and reported as medians.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .acceptance import SpecReport, SpecStats, closed_form_acceptance_length  # noqa: F401 (re-exported)
from .kvcache import ragged_forward


# ----------------------------------------------------------------------------- verification
@torch.no_grad()
def verify_drafts(
    target_logits_B_K1_V: torch.Tensor,
    draft_B_K: torch.Tensor,
    draft_probs_B_K_V: torch.Tensor,
    temperature: float,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accept or reject each row's drafts by speculative sampling.

    :param target_logits_B_K1_V: the target's logits at the ``k + 1`` verified positions (row's
        last token, then each draft): position ``j`` gives ``p_{j+1}``.
    :param draft_B_K: the drafted ids.
    :param draft_probs_B_K_V: ``q``, the drafter's distributions the drafts were drawn from
        (one-hot at temperature 0), over the target's vocabulary.
    :param temperature: the serving temperature (0: greedy).
    :param generator: the random stream of the uniforms and of the corrected/bonus draws.
    :return: ``n_accepted_B`` (long, ``0..k``), ``next_token_B`` (the correction at the first
        rejection or the bonus token) and ``overlap_B_K`` = ``sum_v min(p_j, q_j)`` =
        ``1 - TVD(p_j, q_j)``, the probability that draft ``j`` is accepted given its context.
    """
    B, K = draft_B_K.shape
    rows_B = torch.arange(B, device=draft_B_K.device)
    q_B_K_V = draft_probs_B_K_V.float()
    if temperature == 0:
        best_B_K1 = target_logits_B_K1_V.argmax(-1)
        accept_B_K = draft_B_K == best_B_K1[:, :K]
        n_acc_B = accept_B_K.long().cumprod(-1).sum(-1)
        next_B = best_B_K1[rows_B, n_acc_B]
        overlap_B_K = q_B_K_V.gather(-1, best_B_K1[:, :K, None]).squeeze(-1)
        return n_acc_B, next_B, overlap_B_K
    p_B_K1_V = torch.softmax(target_logits_B_K1_V.float() / temperature, dim=-1)
    p_draft_B_K = p_B_K1_V[:, :K].gather(-1, draft_B_K[..., None]).squeeze(-1)
    q_draft_B_K = q_B_K_V.gather(-1, draft_B_K[..., None]).squeeze(-1)
    u_B_K = torch.rand(B, K, generator=generator, device=generator.device if generator is not None else "cpu")
    # u < p/q, written without the division (q > 0: the draft was drawn from q).
    accept_B_K = u_B_K.to(p_draft_B_K.device) * q_draft_B_K < p_draft_B_K
    n_acc_B = accept_B_K.long().cumprod(-1).sum(-1)
    # The emitted token's distribution: the residual max(0, p_j - q_j) at the first rejection,
    # p_{k+1} when all were accepted (q_{k+1} := 0 makes that the same formula).
    q_B_K1_V = torch.cat([q_B_K_V, q_B_K_V.new_zeros(B, 1, q_B_K_V.shape[-1])], dim=1)
    residual_B_V = (p_B_K1_V[rows_B, n_acc_B] - q_B_K1_V[rows_B, n_acc_B]).clamp_min(0)
    # A rejection implies p(d) < q(d), hence positive residual mass; guard round-off anyway.
    empty_B = residual_B_V.sum(-1) <= 0
    if bool(empty_B.any()):
        residual_B_V[empty_B] = p_B_K1_V[rows_B, n_acc_B][empty_B]
    draw_device = generator.device if generator is not None else residual_B_V.device
    next_B = torch.multinomial(residual_B_V.to(draw_device), 1, generator=generator).squeeze(-1).to(draft_B_K.device)
    overlap_B_K = torch.minimum(p_B_K1_V[:, :K], q_B_K_V).sum(-1)
    return n_acc_B, next_B, overlap_B_K


def pick_tokens(logits_B_V: torch.Tensor, temperature: float,
                generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row at ``temperature`` (0: argmax); return ``(token_B, probs_B_V)``
    with ``probs`` one-hot at temperature 0 (float32)."""
    if temperature == 0:
        token_B = logits_B_V.argmax(-1)
        probs_B_V = torch.zeros(logits_B_V.shape, dtype=torch.float32, device=logits_B_V.device)
        probs_B_V.scatter_(-1, token_B[:, None], 1.0)
        return token_B, probs_B_V
    probs_B_V = torch.softmax(logits_B_V.float() / temperature, dim=-1)
    draw_device = generator.device if generator is not None else probs_B_V.device
    token_B = torch.multinomial(probs_B_V.to(draw_device), 1, generator=generator).squeeze(-1).to(logits_B_V.device)
    return token_B, probs_B_V


@dataclass(frozen=True)
class Generation:
    """What one call of ``SpecDecoder.generate`` / ``generate_target_only`` returns."""

    completions: list
    """Emitted token ids per prompt (EOS included when produced), cut at the budget."""
    stats: Optional[SpecStats]
    """Acceptance counts (None for target-only decoding)."""
    seconds: float
    """Wall-clock time of the call."""

    @property
    def tokens(self) -> int:
        return sum(len(c) for c in self.completions)


# ----------------------------------------------------------------------------- the engine
class SpecDecoder:
    """Speculative decoding of one target with one drafter (and target-only decoding with the
    same forward machinery, the speed baseline).

    :param target: the target causal LM (a ``LlamaForCausalLM`` takes the fast path; others are
        recomputed in full each round: exact, slow). Its weights are snapshotted here.
    :param drafter: a ``base.Drafter`` (None: only ``generate_target_only``).
    :param k: draft tokens per round (>= 1).
    :param temperature: serving temperature (0: greedy).
    :param eos_id: the id that ends a completion.
    """

    def __init__(self, target: torch.nn.Module, drafter=None, *, k: int = 4, temperature: float = 0.0, eos_id: int):
        if k < 1:
            raise ValueError(f"k (draft tokens) must be at least 1, got {k}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.drafter = drafter
        self.k = k
        self.temperature = float(temperature)
        self.eos_id = int(eos_id)
        layers = getattr(drafter, "feature_layers", None) if drafter is not None else None
        self.feature_layers = tuple(layers) if layers is not None else None
        self.target = ragged_forward(target, self.feature_layers)
        self.vocab_size = self.target.vocab_size

    # ------------------------------------------------------------------------------ helpers
    def _start(self, prompts: Sequence[Sequence[int]], budgets: list[int], extra: int):
        """Prefill every prompt but its last token; return the captured features or None."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generation needs at least one prompt, each with at least one token")
        B = len(prompts)
        capacity = max(len(p) for p in prompts) + max(budgets) + extra + 2
        self.target.start(B, capacity)
        prefix = [list(p[:-1]) for p in prompts]
        width = max(len(p) for p in prefix)
        features = None
        if self.feature_layers is not None:  # the target's features at every computed position
            features = torch.zeros(B, capacity, len(self.feature_layers) * self.target.hidden_size, dtype=torch.float32)
        if width == 0:
            return features
        ids_B_L = torch.zeros(B, width, dtype=torch.long)
        for b, p in enumerate(prefix):
            ids_B_L[b, :len(p)] = torch.tensor(p, dtype=torch.long)
        n_new_B = torch.tensor([len(p) for p in prefix], dtype=torch.long)
        _, aux_B_L_A = self.target.extend(ids_B_L, n_new_B)
        if features is not None:
            for b, p in enumerate(prefix):
                features[b, :len(p)] = aux_B_L_A[b, :len(p)].float().cpu()
        return features

    @staticmethod
    def _budgets(prompts, max_new_tokens) -> list[int]:
        B = len(prompts)
        budgets = [int(max_new_tokens)] * B if isinstance(max_new_tokens, int) else [int(n) for n in max_new_tokens]
        if len(budgets) != B or min(budgets) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, one for all rows or one per prompt; got {max_new_tokens!r}")
        return budgets

    # ------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens, *,
                 generator: Optional[torch.Generator] = None) -> Generation:
        """Speculative decoding of every prompt (one batch); see the module docstring."""
        if self.drafter is None:
            raise ValueError("SpecDecoder.generate needs a drafter (generate_target_only does not)")
        t0 = time.perf_counter()
        k, T, eos = self.k, self.temperature, self.eos_id
        budgets = self._budgets(prompts, max_new_tokens)
        features = self._start(prompts, budgets, extra=k + 1)
        self.drafter.reset()
        B = len(prompts)
        seqs = [list(p) for p in prompts]
        outs: list[list[int]] = [[] for _ in range(B)]
        active = [True] * B
        cached = [len(p) - 1 for p in prompts]  # target positions in the cache, per row
        stats = SpecStats(k=k)
        attempts, accepted, overlaps = stats.attempts_K, stats.accepted_K, stats.overlap_K
        n_verify = [k + 1] * B
        # Per round: as few tensor operations as possible (on a CPU each costs more than a tiny
        # model's arithmetic); the bookkeeping of a few rows is cheaper in plain Python.
        while any(active):
            feats = [features[b, :len(seqs[b]) - 1] for b in range(B)] if features is not None else None
            draft_B_K, q_B_K_V = self.drafter.propose(seqs, feats, k, temperature=T, generator=generator)
            draft_B_K = draft_B_K.to(self.target.device)
            q_B_K_V = self._to_target_vocab(q_B_K_V)
            last_B_1 = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long, device=draft_B_K.device)
            hidden_B_K1_H, aux_B_K1_A = self.target.extend(torch.cat([last_B_1, draft_B_K], dim=1), n_verify)
            n_acc_B, next_B, overlap_B_K = verify_drafts(self.target.logits(hidden_B_K1_H), draft_B_K, q_B_K_V, T, generator)
            stats.target_forwards += 1
            drafts, n_acc, nxt, overlap = draft_B_K.tolist(), n_acc_B.tolist(), next_B.tolist(), overlap_B_K.tolist()
            for b in range(B):
                if not active[b]:
                    continue  # a finished row keeps its sequence; its cache does not advance
                a, row = n_acc[b], drafts[b]
                room = budgets[b] - len(outs[b])
                # Draft j is judged when all before it were accepted, none of them was EOS, and
                # it lies within the row's remaining budget.
                for j in range(min(a + 1, k, room)):
                    if j and row[j - 1] == eos:
                        break
                    attempts[j] += 1
                    overlaps[j] += overlap[b][j]
                    accepted[j] += j < a
                new = row[:a] + [nxt[b]]
                stats.rounds += 1
                stats.emitted_uncut += len(new)
                if eos in new:
                    new = new[:new.index(eos) + 1]
                    active[b] = False
                if len(new) >= room:
                    new = new[:room]
                    active[b] = False
                outs[b] += new
                seqs[b] += new
                stats.emitted += len(new)
                if features is not None:
                    features[b, cached[b]:cached[b] + a + 1] = aux_B_K1_A[b, :a + 1].float().cpu()
                cached[b] += a + 1
            self.target.crop(cached)
        return Generation(outs, stats, time.perf_counter() - t0)

    def _to_target_vocab(self, q_B_K_V: torch.Tensor) -> torch.Tensor:
        V = self.vocab_size
        if q_B_K_V.shape[-1] == V:
            return q_B_K_V.to(self.target.device)
        if q_B_K_V.shape[-1] < V:  # a drafter with fewer ids never drafts the others
            pad = q_B_K_V.new_zeros(*q_B_K_V.shape[:-1], V - q_B_K_V.shape[-1])
            return torch.cat([q_B_K_V, pad], dim=-1).to(self.target.device)
        raise ValueError(f"the drafter's distributions cover {q_B_K_V.shape[-1]} ids, the target's vocabulary {V}")

    @torch.no_grad()
    def generate_target_only(self, prompts: Sequence[Sequence[int]], max_new_tokens, *,
                             generator: Optional[torch.Generator] = None) -> Generation:
        """Plain decoding with the target alone, one token per forward, on the same cache and
        forward as ``generate``: the baseline its speed-up is measured against."""
        t0 = time.perf_counter()
        T, eos = self.temperature, self.eos_id
        budgets = self._budgets(prompts, max_new_tokens)
        self._start(prompts, budgets, extra=1)
        B = len(prompts)
        outs: list[list[int]] = [[] for _ in range(B)]
        active = [True] * B
        last_B = torch.tensor([p[-1] for p in prompts], dtype=torch.long)
        ones = [1] * B
        while any(active):
            hidden_B_1_H, _ = self.target.extend(last_B[:, None], ones)
            token_B, _ = pick_tokens(self.target.logits(hidden_B_1_H[:, 0]), T, generator)
            tokens = token_B.tolist()
            for b in range(B):
                if active[b]:
                    outs[b].append(tokens[b])
                    if tokens[b] == eos or len(outs[b]) >= budgets[b]:
                        active[b] = False
            last_B = token_B
        return Generation(outs, None, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- measuring
def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(
    target: torch.nn.Module,
    drafter,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens,
    eos_id: int,
    k: int = 4,
    temperature: float = 0.0,
    batch_size: int = 1,
    repetitions: int = 3,
    seed: int = 0,
    time_it: bool = True,
    check_identity: bool = True,
    progress: bool = False,
    desc: str = "specdec",
) -> SpecReport:
    """Decode ``prompts`` speculatively (in batches of ``batch_size``) and report acceptance; with
    ``time_it``, also time speculative and target-only decoding of the same prompts
    ``repetitions`` times, both methods on each batch back to back in alternating order, and
    report medians. At temperature 0 (and ``check_identity``) the speculative output is compared
    with target-only greedy decoding's.

    :param max_new_tokens: one budget for all prompts or one per prompt.
    """
    import torch as _torch

    prompts = [list(p) for p in prompts]
    budgets = SpecDecoder._budgets(prompts, max_new_tokens)
    decoder = SpecDecoder(target, drafter, k=k, temperature=temperature, eos_id=eos_id)
    order = list(range(len(prompts)))
    chunks = _batches(order, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        passes = 1 + (temperature == 0 and check_identity) + (2 * repetitions if time_it else 0)
        bar = tqdm(total=len(chunks) * passes, desc=desc, dynamic_ncols=True, leave=False)

    def run(method: str, rep: int):
        out, seconds = [None] * len(prompts), 0.0
        stats = SpecStats(k=k)
        for c, rows in enumerate(chunks):
            gen = _torch.Generator().manual_seed(seed * 1_000_003 + rep * 7919 + c)
            fn = decoder.generate if method == "spec" else decoder.generate_target_only
            g = fn([prompts[r] for r in rows], [budgets[r] for r in rows], generator=gen)
            seconds += g.seconds
            if g.stats is not None:
                stats.merge(g.stats)
            for r, comp in zip(rows, g.completions):
                out[r] = comp
            if bar is not None:
                bar.update(1)
        return out, seconds, stats

    spec_out, _, stats = run("spec", 0)
    identical = None
    if temperature == 0 and check_identity:
        target_out, _, _ = run("target", 0)
        identical = target_out == spec_out
    spec_rates, target_rates, ratios = [], [], []
    if time_it:
        fns = {"spec": decoder.generate, "target": decoder.generate_target_only}
        for rep in range(repetitions):
            seconds, tokens = {"spec": 0.0, "target": 0.0}, {"spec": 0, "target": 0}
            for c, rows in enumerate(chunks):
                # Both methods on the same chunk back to back, in alternating order: a machine
                # busy with something else slows both alike.
                for method in (("target", "spec") if (rep + c) % 2 == 0 else ("spec", "target")):
                    gen = _torch.Generator().manual_seed(seed * 1_000_003 + (rep + 1) * 7919 + c)
                    g = fns[method]([prompts[r] for r in rows], [budgets[r] for r in rows], generator=gen)
                    seconds[method] += g.seconds
                    tokens[method] += g.tokens
                    if bar is not None:
                        bar.update(1)
            spec_rates.append(tokens["spec"] / max(seconds["spec"], 1e-9))
            target_rates.append(tokens["target"] / max(seconds["target"], 1e-9))
            ratios.append(spec_rates[-1] / target_rates[-1])
    if bar is not None:
        bar.close()
    spec_tps = statistics.median(spec_rates) if spec_rates else math.nan
    target_tps = statistics.median(target_rates) if target_rates else math.nan
    return SpecReport(
        k=k, temperature=temperature, batch_size=batch_size, prompts=len(prompts),
        acceptance_length=stats.acceptance_length, acceptance_length_uncut=stats.acceptance_length_uncut,
        position_acceptance=stats.position_acceptance, predicted_position_acceptance=stats.predicted_position_acceptance,
        mean_token_acceptance=stats.mean_token_acceptance, closed_form_acceptance_length=stats.closed_form_acceptance_length,
        tokens_per_s=spec_tps, target_tokens_per_s=target_tps,
        speedup=statistics.median(ratios) if ratios else math.nan,
        repetitions=repetitions if time_it else 0, identical_to_target=identical, tokens=stats.emitted,
    )
