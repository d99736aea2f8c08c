"""``[teacher] scorer = "sglang"``: teacher log-probs from SGLang servers.

One config change from the embedded default::

    [teacher]
    scorer = "sglang"
    top_k = 16                      # teacher top-k per position (0: the sampled token only)
    [teacher.options]
    urls = ["http://127.0.0.1:30000", "http://127.0.0.1:30001"]
    student_topk = 0                # > 0: also the teacher's log-probs on the student's top-k ids
    cache_dir = "runs/teacher-cache"

The scores are sparse (``TeacherScores`` without hidden states): use the ``sampled``,
``teacher_topk`` or ``student_topk`` supports, not ``full``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdplug.errors import ConfigError, PreflightError
from opdplug.types import TeacherScores

from .cache import ScoreCache
from .client import RetryPolicy, SGLangClient
from .target import SGLangTarget


@dataclass(frozen=True)
class ServerOptions:
    """How to reach SGLang servers (shared by the teacher scorer and the rollout engine)."""

    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:30000"])
    """Server base URLs; requests are spread over all of them and fail over between them."""
    batch_size: int = 8
    """Sequences per HTTP request."""
    max_concurrency: int = 8
    """HTTP requests in flight at once (over all servers)."""
    timeout_s: float = 120.0
    """Seconds to wait for one answer."""
    retry_budget_s: float = 60.0
    """Seconds a failing request is retried (with backoff) before the step is given up."""

    def make_client(self) -> SGLangClient:
        if self.batch_size < 1 or self.max_concurrency < 1:
            raise ConfigError("batch_size and max_concurrency must be at least 1")
        policy = RetryPolicy(timeout_s=self.timeout_s, budget_s=self.retry_budget_s)
        return SGLangClient(self.urls, policy, max_concurrency=self.max_concurrency)


@dataclass(frozen=True)
class SGLangTeacher(ServerOptions):
    """A teacher served by SGLang scores every student token (and its top-k)."""

    student_topk: int = 0
    """> 0: also fetch the teacher's log-probs on the student's own top-k ids at each position
    (``token_ids_logprob``), for the ``student_topk`` support. Costs one no-grad student pass."""
    cache_dir: str = ""
    """A directory for the teacher-score cache ("" disables it)."""
    check_vocabulary: bool = True
    """At start-up, compare the server's token texts with the student tokenizer's."""
    _state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, ctx) -> None:
        """The component lifecycle: connect before step 0, so a wrong URL or tokenizer is a
        one-line error, not a failure at step 1."""
        self.connect(ctx)

    def connect(self, ctx) -> SGLangTarget:
        """Build the client, check the server, and keep the target for the run."""
        if "target" in self._state:
            return self._state["target"]
        if ctx.config.rollout.temperature != 1.0:
            raise ConfigError(
                f"teacher.scorer = 'sglang' returns log-probs at temperature 1, but rollout.temperature = "
                f"{ctx.config.rollout.temperature}; set rollout.temperature = 1.0 or use a local teacher"
            )
        client = self.make_client()
        target = SGLangTarget(client, batch_size=self.batch_size, vocab_size=len(ctx.tokenizer))
        info = target.model_info()
        if self.check_vocabulary:
            target.check_vocabulary(ctx.tokenizer)
        if self.cache_dir:
            namespace = f"{info.get('model_path', '?')}|T=1"
            target.cache = ScoreCache(self.cache_dir, namespace)
        self._state.update(target=target, vocab=len(ctx.tokenizer))
        return target

    def metrics(self) -> dict:
        target = self._state.get("target")
        if target is None:
            return {}
        out = {
            "sglang/teacher_tokens": float(target.scored_tokens),
            "sglang/teacher_seconds": target.seconds,
            "sglang/retries": float(target.client.stats.retries),
        }
        if target.cache is not None:
            out.update({
                "sglang/cache_hits": float(target.cache.hits),
                "sglang/cache_misses": float(target.cache.misses),
                "sglang/cache_bytes": float(target.cache.size_bytes()),
            })
        return out

    # ------------------------------------------------------------------ scoring
    def __call__(self, ctx, batch) -> TeacherScores:
        target = self.connect(ctx)
        top_k = ctx.config.teacher.top_k
        B, L = batch.input_ids_B_L.shape
        mask_B_L = batch.loss_mask_B_L.bool()
        student_ids_B_L_K = self._student_topk(ctx, batch) if self.student_topk > 0 else None
        rows, starts, chosen, scored = [], [], [], []
        for b in range(B):
            where = mask_B_L[b].nonzero().flatten()
            if len(where) == 0:
                continue
            n = int(batch.attention_mask_B_L[b].sum())
            first = max(int(where[0]), 1)
            rows.append(batch.input_ids_B_L[b, :n].tolist())
            starts.append(first)
            scored.append(b)
            if student_ids_B_L_K is not None:
                chosen.append(sorted(set(student_ids_B_L_K[b, first:n].flatten().tolist())))
        results = target.score(rows, starts, top_k=top_k, chosen_ids=chosen if student_ids_B_L_K is not None else None)

        token_lp = torch.zeros(B, L, dtype=torch.float32)
        topk_ids = topk_lp = tail = None
        if top_k > 0:
            topk_ids = torch.zeros(B, L, top_k, dtype=torch.long)
            topk_lp = torch.full((B, L, top_k), float("-inf"))
        chosen_lp = None
        if student_ids_B_L_K is not None:
            chosen_lp = torch.full(student_ids_B_L_K.shape, float("-inf"))
        for b, first, s, c in zip(scored, starts, results, chosen or [None] * len(scored)):
            end = first + s.num_positions
            token_lp[b, first:end] = s.token_logprobs_T
            if top_k > 0:
                if int(s.topk_ids_T_K.max()) >= self._state["vocab"]:
                    raise PreflightError(
                        f"the SGLang teacher returned token id {int(s.topk_ids_T_K.max())}, outside the student's "
                        f"vocabulary of {self._state['vocab']}; serve a teacher with the student's tokenizer"
                    )
                topk_ids[b, first:end], topk_lp[b, first:end] = s.topk_ids_T_K, s.topk_logprobs_T_K
            if c is not None:
                column = {tok: j for j, tok in enumerate(c)}
                index_T_K = torch.tensor(
                    [[column[t] for t in row] for row in student_ids_B_L_K[b, first:end].tolist()], dtype=torch.long
                )
                chosen_lp[b, first:end] = s.chosen_logprobs_T_C.gather(1, index_T_K)
        token_lp = token_lp * mask_B_L  # 0 outside the loss mask, as the data model says
        if top_k > 0:  # log(1 - top-k mass), the mass outside the top-k; clamped below 0
            tail = torch.log(-torch.expm1(torch.logsumexp(topk_lp, dim=-1).clamp(max=-1e-7)))
        return TeacherScores(
            token_logprobs_B_L=token_lp, topk_ids_B_L_K=topk_ids, topk_logprobs_B_L_K=topk_lp,
            tail_logmass_B_L=tail, temperature=1.0,
            chosen_ids_B_L_K=student_ids_B_L_K, chosen_logprobs_B_L_K=chosen_lp,
        )

    def _student_topk(self, ctx, batch) -> torch.Tensor:
        """The student's top-k ids at every position ([B, L, k], long), no gradient."""
        from opdplug_local.models import score_with_model

        dense = score_with_model(ctx.student_module(), batch, temperature=1.0, top_k=self.student_topk,
                                 chunk_size=1024)
        return dense.topk_ids_B_L_K.cpu()
