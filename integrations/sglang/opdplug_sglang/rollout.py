"""``[rollout] sampler = "sglang"``: the student's completions sampled by SGLang servers.

The servers serve a copy of the student. Before sampling step ``s`` the copy's weights are
brought up to date when they lag by more than ``max_staleness`` steps: the trained student is
written to ``sync_dir`` (safetensors, atomically) and every server is told to load it with
``/update_weights_from_disk``. ``max_staleness = 0`` (the default) pushes before every step, so
every rollout is strictly on-policy; larger values trade freshness for fewer pushes, and the lag
is logged as ``sglang/staleness`` and marked per row in ``on_policy_B``.

A server that restarted serves its original weights again; the sampler notices (the model path
the server reports is not the last one pushed) and pushes again before sampling. The weights are
pushed at the start of a step, never at its end, so a push that fails leaves the step undone
and the loop's whole-step retry and checkpoint-on-failure cover it.

Token ids are kept exactly as the server generated them, and the sampling log-probs are the
server's (``output_token_logprobs``), so importance weights and on-policy checks see the
policy that actually sampled.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from opdplug.errors import ConfigError, TrainingError
from opdplug_local.models import collate
from opdplug.types import PRODUCER_STUDENT

from .client import MalformedResponse
from .protocol import answers_of, batch_payload, parse_sample, sampling_payload
from .scorer import ServerOptions


@dataclass(frozen=True)
class SGLangRollout(ServerOptions):
    """Student rollouts from SGLang servers serving the student, weights kept in sync."""

    max_staleness: int = 0
    """Steps the served weights may lag the trained ones (0: push before every step)."""
    sync_dir: str = ""
    """Where pushed weights are written ("": ``<run.output_dir>/sglang-weights``). Every server
    must be able to read it (same machine or a shared file system)."""
    seeded: bool = True
    """Send each row a ``sampling_seed`` derived from the run seed, step and global row. Whether
    the server honours it depends on its backend: SGLang's CPU engine (0.5.23) does not, so
    there a rerun draws other completions."""
    _state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.max_staleness < 0:
            raise ConfigError(f"rollout.options.max_staleness must be >= 0, got {self.max_staleness}")

    def setup(self, ctx) -> None:
        """The component lifecycle: the served student must speak the trained one's vocabulary."""
        from .target import SGLangTarget

        SGLangTarget(self._client()).check_vocabulary(ctx.tokenizer)

    # ------------------------------------------------------------------ weight sync
    def _client(self):
        if "client" not in self._state:
            self._state["client"] = self.make_client()
        return self._state["client"]

    def served_paths(self) -> list:
        return [self._client().get("/get_model_info", url=u, failover=False).get("model_path") for u in self._client().urls]

    def sync(self, ctx, step: int) -> int:
        """Push the student's weights if the servers lag too much; returns the staleness."""
        acc = ctx.accelerator
        pushed = self._state.get("pushed")  # (step, path) of the last push, or None
        decision = [None]
        if acc is None or acc.is_main_process:
            stale = pushed is None or step - pushed[0] > self.max_staleness
            if not stale and any(p != pushed[1] for p in self.served_paths()):
                stale = True  # a server restarted (or someone else loaded weights): push again
            decision = [stale]
        if acc is not None and acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            decision = broadcast_object_list(decision)
        if decision[0]:
            path = self._push(ctx, step)
            self._state["pushed"] = (step, path)
            self._state["pushes"] = self._state.get("pushes", 0) + 1
        return step - self._state["pushed"][0]

    def _push(self, ctx, step: int) -> str:
        acc = ctx.accelerator
        root = Path(self.sync_dir or Path(ctx.config.run.output_dir) / "sglang-weights").resolve()
        final = root / f"step-{step:06d}"
        if acc is None or acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            ctx.manager.hook.opd_save_model(ctx=ctx, directory=final)  # the backend's own export: safetensors, LoRA merged, atomic
            client = self._client()
            for url in client.urls:
                answer = client.post("/update_weights_from_disk",
                                     {"model_path": str(final), "weight_version": f"opdplug-{final.name}"},
                                     url=url, failover=False)
                if not (isinstance(answer, dict) and answer.get("success", False)):
                    raise TrainingError(
                        f"SGLang server {url} refused the student's weights from {final}: "
                        f"{answer.get('message') if isinstance(answer, dict) else answer!r}; serve a model with the student's architecture"
                    )
            for old in root.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        if acc is not None and acc.num_processes > 1:
            acc.wait_for_everyone()
        return str(final)

    # ------------------------------------------------------------------ sampling
    def __call__(self, ctx, prompts, step):
        staleness = self.sync(ctx, step)
        self._state["staleness"] = staleness
        tok, run = ctx.tokenizer, ctx.config.rollout
        max_new = run.max_new_tokens or ctx.task.max_new_tokens(max(p.meta.get("length", 1) for p in prompts))
        if run.temperature <= 0:
            raise ConfigError("rollout.sampler = 'sglang' samples; set rollout.temperature > 0")
        seeds = ctx.row_seeds(prompts, "sglang", step) if self.seeded else [None] * len(prompts)
        requests = [
            sampling_payload(
                p.prompt_ids, max_new_tokens=max_new, temperature=run.temperature, top_p=run.top_p,
                eos_id=tok.eos_token_id, seed=None if seed is None else seed % (2**31),
            )
            for p, seed in zip(prompts, seeds)
        ]
        groups = [list(range(s, min(s + self.batch_size, len(prompts)))) for s in range(0, len(prompts), self.batch_size)]
        payloads = [batch_payload([requests[i] for i in g]) for g in groups]
        samples: dict = {}

        def validate(response, g_index):
            group = groups[g_index]
            for i, answer in zip(group, answers_of(response, len(group))):
                samples[i] = parse_sample(answer, max_new_tokens=max_new, eos_id=tok.eos_token_id)

        self._client().post_many("/generate", payloads, validate=validate)
        ordered = [samples[i] for i in range(len(prompts))]
        return collate(
            prompts, [s.ids for s in ordered], producer=PRODUCER_STUDENT, pad_id=tok.pad_token_id,
            logprobs=[s.logprobs for s in ordered], truncated=[s.truncated for s in ordered],
            on_policy=staleness == 0,
        )

    def metrics(self) -> dict:
        if "pushed" not in self._state:
            return {}
        return {
            "sglang/staleness": float(self._state.get("staleness", 0)),
            "sglang/weight_pushes": float(self._state.get("pushes", 0)),
        }


__all__ = ["SGLangRollout", "MalformedResponse"]
