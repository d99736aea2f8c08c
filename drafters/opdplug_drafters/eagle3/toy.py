"""Toy targets and heads, built offline in milliseconds, for tests and demos."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .config import default_aux_layers, draft_config
from .model import Eagle3Head
from .vocab import build_vocab, full_vocab


def toy_target(num_layers: int = 4, seed: int = 1, directory: Union[str, os.PathLike, None] = None):
    """A tiny untrained Llama (``tiny`` size, ``num_layers`` deep) with SumChain's tokenizer,
    saved to ``directory`` when given. Returns ``(model, tokenizer)``."""
    from opdplug_local import tiny
    from opdplug_local.tasks import SumChain

    tokenizer = tiny.build_tokenizer(SumChain().words())
    model = tiny.build_model(dict(tiny.SIZES["tiny"], num_hidden_layers=num_layers), tokenizer, seed=seed).eval()
    if directory is not None:
        tiny.save_pretrained_pair(model, tokenizer, Path(directory))
    return model, tokenizer


def toy_head(
    target,
    *,
    draft_vocab_size: Optional[int] = None,
    aux_layers: Optional[Sequence[int]] = None,
    always: Sequence[int] = (2,),
    seed: int = 0,
) -> Eagle3Head:
    """A randomly initialised head for ``target``; a draft vocabulary smaller than the target's
    keeps the highest ids plus ``always`` (arbitrary but deterministic)."""
    V = int(target.config.vocab_size)
    size = draft_vocab_size or V
    aux = tuple(aux_layers or default_aux_layers(target.config.num_hidden_layers))
    d2t, t2d = full_vocab(V) if size == V else build_vocab(torch.arange(V), size, always=always)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Eagle3Head(draft_config(target.config, draft_vocab_size=size, aux_layers=aux))
    head.set_vocab(d2t, t2d)
    head.init_from_target(target)
    return head.eval()
