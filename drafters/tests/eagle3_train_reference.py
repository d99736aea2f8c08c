"""The EAGLE-3 head's training loop as it was before the head trained in the core loop
(``eagle3/train.py`` up to that change), reduced to its arithmetic: AdamW, linear warm-up then
constant, global-norm clipping, the TTT loss averaged per step (``ttt.ttt_loss``), one batch of
target completions per step. The core-loop path must reproduce its loss curve. Tests only."""
from __future__ import annotations

import torch

from opdplug_drafters.eagle3.ttt import generate, target_batch, ttt_loss


def reference_train(head, target, batches_prompts, options, *, lr: float, warmup_steps: int, weight_decay: float = 0.0,
                    grad_clip: float = 1.0, ttt_steps: int, step_decay: float, eos_id, pad_id: int, seed: int = 0):
    """Train ``head`` in place on one batch of prompts per step; return the per-step metrics.

    ``batches_prompts[i]`` are step i's prompts; the target completes them with ``generate``
    (``options.max_new_tokens``, ``options.temperature``) from seed ``seed * 1_000_003 + 500_009 + i``
    as the old loop did."""
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    warmup = max(1, warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    history = []
    head.train()
    for step, prompts in enumerate(batches_prompts):
        sample = generate(target, prompts, options, eos_id=eos_id, pad_id=pad_id, seed=seed * 1_000_003 + 500_009 + step)
        batch = target_batch(target, sample, head.aux_layers, head.draft_to_target_Vd)
        loss, m = ttt_loss(head, batch, ttt_steps, step_decay)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        optimizer.step()
        scheduler.step()
        history.append(m)
    return history
