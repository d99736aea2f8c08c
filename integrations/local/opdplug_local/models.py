"""The embedded default backend: student and teacher as local Hugging Face models.

Loading (with optional LoRA), tokenizer agreement, rollouts from a local model or from reference
completions, and the local scorers (``local``, ``self``, ``none``).
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from . import prefill_reuse, sampling
# Tokenizers live in their own module; these names are part of this module's API too.
from .tokenization import END_OF_TURN_TOKENS, check_tokenizers, load_tokenizer, pad_id_of, stop_token_ids  # noqa: F401
from opdplug.config import Config, ModelOptions
from opdplug.errors import ConfigError
from opdplug.types import (
    PRODUCER_ENV,
    PRODUCER_PAD,
    PRODUCER_PROMPT,
    PRODUCER_REFERENCE,
    Prompt,
    RolloutBatch,
    TeacherScores,
)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block, its mode restored after. A model already in eval
    mode (a frozen teacher) is left alone: ``train()``/``eval()`` walk every submodule, twice per
    call otherwise."""
    was_training = model.training
    # ``torch.nn.Module.train`` itself, not the model's override: transformers 5's ``train()``
    # re-runs hub-kernel ``kernelize`` on every mode change (about 1 ms per switch on CPU, twice a
    # step), while only the ``training`` flags (dropout) matter to sampling and scoring.
    if was_training:
        torch.nn.Module.train(model, False)
    try:
        yield model
    finally:
        if was_training:
            torch.nn.Module.train(model, True)


# ----------------------------------------------------------------------------- loading
def load_model(path: str, key: str, dtype: str = "float32", attn_implementation: str = ""):
    """A causal LM from a local directory; a missing or broken directory is a one-line error."""
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        raise ConfigError(f"{key} = {path!r} is not a directory; point it at a local Hugging Face model")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype), **kwargs)
    except Exception as exc:
        raise ConfigError(f"{key} = {path!r} could not be loaded: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def load_student(config: Config, task_factory: Any):
    """The student model and tokenizer named by ``[student]`` (and LoRA-wrapped if asked).

    A ``tiny`` student speaks the teacher's tokenizer, or one built from ``task_factory.words()``.
    """
    opts = config.student
    if bool(opts.path) == bool(opts.tiny):
        raise ConfigError("[student] needs exactly one of path (a model directory) or tiny (a size name)")
    if opts.path:
        model = load_model(opts.path, "student.path", opts.dtype, opts.attn_implementation)
        tokenizer = load_tokenizer(opts.path)
    else:
        from . import tiny

        if opts.tiny not in tiny.SIZES:
            raise ConfigError(f"student.tiny = {opts.tiny!r} is unknown; allowed: {', '.join(tiny.SIZES)}")
        tokenizer = load_tokenizer(config.teacher.path) if config.teacher.path else tiny.build_tokenizer(task_factory.words())
        model = tiny.build_model(opts.tiny, tokenizer, seed=opts.init_seed).to(getattr(torch, opts.dtype))
    return maybe_lora(model, opts), tokenizer


def maybe_lora(model, opts: ModelOptions):
    if opts.lora_r <= 0:
        if opts.adapter:
            raise ConfigError("student.adapter needs student.lora_r > 0 (the rank and targets the adapter was trained with)")
        return model
    try:
        import peft
    except ImportError:
        raise ConfigError("student.lora_r > 0 needs peft: pip install 'opdplug[peft]'") from None
    cfg = peft.LoraConfig(
        r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
        target_modules=list(opts.lora_targets), task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):  # the adapter's initial A from init_seed, not the global RNG
        torch.manual_seed(opts.init_seed)
        model = peft.get_peft_model(model, cfg)
    if opts.adapter:
        load_adapter(model, opts.adapter)
    return model


def load_adapter(model, path: str) -> None:
    """Copy a trained LoRA adapter into ``model``'s fresh one (``student.adapter``).

    ``path`` is an opdplug run directory (its latest checkpoint), a checkpoint directory (whose
    ``model.safetensors`` holds exactly the trainable tensors under their parameter names), or
    a peft ``save_pretrained`` directory (``adapter_model.safetensors``).
    """
    from safetensors.torch import load_file

    from opdplug.checkpoint import latest_checkpoint

    key = "student.adapter"
    root = Path(path)
    directory = latest_checkpoint(root) or root
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if (directory / "adapter_model.safetensors").is_file():
        import peft

        state = load_file(str(directory / "adapter_model.safetensors"))
        result = peft.set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise ConfigError(f"{key} = {path!r} does not fit the student's LoRA (e.g. {result.unexpected_keys[0]!r}); use the lora_r and lora_targets it was trained with")
        return
    if not (directory / "model.safetensors").is_file():
        raise ConfigError(f"{key} = {path!r} holds no checkpoint or adapter; point it at a LoRA run's output_dir or checkpoint")
    state = load_file(str(directory / "model.safetensors"))
    mismatch = sorted(set(state) ^ set(trainable)) or [n for n in state if state[n].shape != trainable[n].shape]
    if mismatch:
        raise ConfigError(f"{key} = {path!r} does not fit the student's LoRA (e.g. {mismatch[0]!r}); use the lora_r and lora_targets it was trained with")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(state[name].to(p.dtype))


def export_model(model: torch.nn.Module, tokenizer, directory: Path) -> Path:
    """``model`` as a plain Hugging Face directory (LoRA merged) with ``tokenizer``, written
    under a temporary name and renamed into place: a killed run never leaves half of one."""
    if hasattr(model, "merge_and_unload"):  # peft: serve a plain model
        model = copy.deepcopy(model).merge_and_unload()
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# ----------------------------------------------------------------------------- rollouts
def collate(
    prompts: Sequence[Prompt],
    completions: Sequence[Sequence[int]],
    *,
    producer: int | Sequence[int],
    pad_id: int,
    logprobs: Sequence[Sequence[float]] | None = None,
    truncated: Sequence[bool] | None = None,
    on_policy: bool | Sequence[bool] = False,
    loss_masks: Sequence[Optional[Sequence[int]]] | None = None,
) -> RolloutBatch:
    """Right-padded ``RolloutBatch`` from prompts and completion token ids (kept exactly).

    ``producer`` and ``on_policy`` are one value for all rows or one per row. ``loss_masks``
    (one per row, None or empty for all ones) marks which completion tokens are trained on; the
    others (the user turns inside a multi-turn reference) are marked ``PRODUCER_ENV``.
    """
    rows = [list(p.prompt_ids) + list(c) for p, c in zip(prompts, completions)]
    L = max(len(r) for r in rows)
    B = len(rows)
    ids = torch.full((B, L), 0 if pad_id is None else pad_id, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    loss = torch.zeros(B, L, dtype=torch.long)
    prod = torch.full((B, L), PRODUCER_PAD, dtype=torch.long)
    lps = torch.zeros(B, L, dtype=torch.float32)
    producers = [producer] * B if isinstance(producer, int) else list(producer)
    on_policy_B = [on_policy] * B if isinstance(on_policy, bool) else list(on_policy)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        P, C = len(p.prompt_ids), len(c)
        ids[i, : P + C] = torch.tensor(rows[i], dtype=torch.long)
        attn[i, : P + C] = 1
        loss[i, P : P + C] = 1
        prod[i, :P] = PRODUCER_PROMPT
        prod[i, P : P + C] = producers[i]
        mask = loss_masks[i] if loss_masks is not None else None
        if mask is not None and len(mask):
            if len(mask) != C:
                raise ValueError(f"row {i}: loss mask of {len(mask)} for a completion of {C} tokens")
            keep = torch.tensor([1 if m else 0 for m in mask], dtype=torch.long)
            loss[i, P : P + C] = keep
            prod[i, P : P + C][keep == 0] = PRODUCER_ENV
        if logprobs is not None:
            lps[i, P : P + C] = torch.tensor(list(logprobs[i]), dtype=torch.float32)
    return RolloutBatch(
        input_ids_B_L=ids,
        attention_mask_B_L=attn,
        loss_mask_B_L=loss,
        producer_B_L=prod,
        sampling_logprobs_B_L=lps,
        prompt_lens_B=torch.tensor([len(p.prompt_ids) for p in prompts], dtype=torch.long),
        truncated_B=torch.tensor(list(truncated) if truncated is not None else [False] * B),
        on_policy_B=torch.tensor(on_policy_B, dtype=torch.bool),
        prompts=tuple(prompts),
    )


def split_rows(batch: RolloutBatch) -> list[tuple[list[int], list[float], int, bool, bool, list[int]]]:
    """Per row: (completion ids, sampling log-probs, producer, truncated, on_policy, loss mask).

    The completion is every real token after the prompt, trained or not (a multi-turn
    reference keeps its user turns, with 0 in the loss mask)."""
    rows = []
    for i in range(batch.batch_size):
        P, end = int(batch.prompt_lens_B[i]), int(batch.attention_mask_B_L[i].sum())
        mask = batch.loss_mask_B_L[i, P:end]
        keep = mask.bool()
        producer = int(batch.producer_B_L[i, P:end][keep][0]) if keep.any() else PRODUCER_PAD
        rows.append((
            batch.input_ids_B_L[i, P:end].tolist(), batch.sampling_logprobs_B_L[i, P:end].tolist(), producer,
            bool(batch.truncated_B[i]) if batch.truncated_B is not None else False,
            bool(batch.on_policy_B[i]) if batch.on_policy_B is not None else False,
            mask.tolist(),
        ))
    return rows


def merge_rollouts(prompts: Sequence[Prompt], parts: Sequence[tuple[Sequence[int], RolloutBatch]], pad_id: int) -> RolloutBatch:
    """One batch in the order of ``prompts`` from sub-batches that each cover some row indices."""
    rows: list = [None] * len(prompts)
    for indices, batch in parts:
        for index, row in zip(indices, split_rows(batch)):
            rows[index] = row
    return collate(
        prompts, [r[0] for r in rows], producer=[r[2] for r in rows], pad_id=pad_id,
        logprobs=[r[1] for r in rows], truncated=[r[3] for r in rows], on_policy=[r[4] for r in rows],
        loss_masks=[r[5] for r in rows],
    )


def reference_rollout(prompts: Sequence[Prompt], pad_id: int) -> RolloutBatch:
    """The prompts' reference completions as a batch (off-policy data, no sampling log-probs)."""
    missing = [i for i, p in enumerate(prompts) if not p.reference_ids]
    if missing:
        raise ConfigError("the task gives no reference completions; choose a sampler that generates")
    return collate(prompts, [p.reference_ids for p in prompts], producer=PRODUCER_REFERENCE, pad_id=pad_id,
                   loss_masks=[p.reference_mask for p in prompts])


def model_rollout(
    model: torch.nn.Module,
    prompts: Sequence[Prompt],
    *,
    producer: int,
    max_new_tokens: int | Sequence[int],
    temperature: float,
    top_p: float,
    tokenizer,
    generator: torch.Generator | None,
    on_policy: bool,
    row_seeds: Sequence[int] | None = None,
    keep_prefill_graph: bool = False,
) -> RolloutBatch:
    """Completions sampled from a local model, with exact ids and sampling log-probs.

    ``max_new_tokens`` is one budget or one per prompt; ``row_seeds`` (one per prompt, instead
    of ``generator``) makes each row's draws independent of its batch (see ``sampling.sample``).
    ``keep_prefill_graph``: record the prompt prefill with gradients for the student forward of
    this very batch (``prefill_reuse``; where the model allows it).
    """
    graphs: list = []
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    reuse = keep_prefill_graph and prefill_reuse.eligible(model, sum(len(p.prompt_ids) for p in prompts), sum(budgets))
    prefill = prefill_reuse.recorder(model, graphs) if reuse else None
    with eval_mode(model):  # no dropout while sampling: the log-probs must be the policy's
        out = sampling.sample(
            model,
            [list(p.prompt_ids) for p in prompts],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_id=stop_token_ids(tokenizer, model),
            pad_id=pad_id_of(tokenizer),
            generator=generator,
            row_seeds=row_seeds,
            prefill=prefill,
        )
    # What ``collate`` would build from the completions, without leaving tensors: the sample is
    # already right-padded as prompt + completion.
    attention_B_L, completion_B_L = out.attention_mask_B_L.cpu(), out.completion_mask_B_L.cpu()
    producer_B_L = (torch.full_like(attention_B_L, PRODUCER_PAD).masked_fill(attention_B_L.bool(), PRODUCER_PROMPT)
                    .masked_fill(completion_B_L.bool(), producer))
    batch = RolloutBatch(
        input_ids_B_L=out.input_ids_B_L.cpu(),
        attention_mask_B_L=attention_B_L,
        loss_mask_B_L=completion_B_L,
        producer_B_L=producer_B_L,
        sampling_logprobs_B_L=out.logprobs_B_L.cpu(),
        prompt_lens_B=out.prompt_lens_B.cpu(),
        truncated_B=out.truncated_B.cpu(),
        on_policy_B=torch.full((len(prompts),), bool(on_policy)),
        prompts=tuple(prompts),
    )
    if graphs:
        prefill_reuse.keep(batch.input_ids_B_L, graphs[0])
    return batch


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_with_model(
    model: torch.nn.Module, batch: RolloutBatch, *, temperature: float, top_k: int, chunk_size: int = 1024,
    input_ids_B_L: torch.Tensor | None = None, attention_mask_B_L: torch.Tensor | None = None,
    offset_B: torch.Tensor | None = None,
) -> TeacherScores:
    """Dense scores from a local model: shifted hidden states + lm_head, token log-probs, top-k.

    ``input_ids_B_L``/``offset_B`` let a privileged teacher see a longer input: row b's
    position ``t + offset_B[b]`` in that input is aligned to position t of ``batch``.
    """
    from .lmhead import chunked_token_logprobs, chunked_topk

    device = next(model.parameters()).device
    ids = (input_ids_B_L if input_ids_B_L is not None else batch.input_ids_B_L).to(device)
    attn = (attention_mask_B_L if attention_mask_B_L is not None else batch.attention_mask_B_L).to(device)
    with eval_mode(model):
        # the rows scored are the loss mask's (a longer privileged input: every row, realigned below)
        hidden = sampling.final_hidden(model, ids, attn, needed_B_L=batch.loss_mask_B_L.to(device) if offset_B is None else None)
    if offset_B is not None:  # realign the longer input onto the batch's positions
        L = batch.input_ids_B_L.shape[1]
        index = (torch.arange(L, device=device)[None, :] + offset_B.to(device)[:, None]).clamp(max=hidden.shape[1] - 1)
        hidden = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1]))
    hidden = hidden.float()
    weight = sampling.lm_head_weight(model).detach().float()
    mask = batch.loss_mask_B_L.to(device).bool()
    token_lp = torch.zeros(mask.shape, dtype=torch.float32, device=device)
    token_lp[mask] = chunked_token_logprobs(
        hidden[mask], weight, batch.input_ids_B_L.to(device)[mask], temperature=temperature, chunk_size=chunk_size
    )
    topk_ids = topk_lp = tail = None
    if top_k > 0:
        B, L = mask.shape
        topk_ids = torch.zeros(B, L, top_k, dtype=torch.long, device=device)
        topk_lp = torch.full((B, L, top_k), float("-inf"), device=device)
        tail = torch.zeros(B, L, device=device)
        i, lp, t = chunked_topk(hidden[mask], weight, top_k, temperature=temperature, chunk_size=chunk_size)
        topk_ids[mask], topk_lp[mask], tail[mask] = i, lp, t
    return TeacherScores(
        token_logprobs_B_L=token_lp, topk_ids_B_L_K=topk_ids, topk_logprobs_B_L_K=topk_lp,
        tail_logmass_B_L=tail, hidden_B_L_H=hidden, lm_head_V_H=weight, temperature=temperature,
    )
