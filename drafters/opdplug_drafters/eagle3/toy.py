"""Toy targets and heads, built offline in milliseconds, for tests and demos: the SumChain Llama
(``toy_target``), targets of each supported family with a real BPE tokenizer (``arch_target``),
and randomly initialised heads of any variant (``toy_head``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .config import HeadNorms, default_aux_layers, draft_config
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


ARCH_SHAPES = {
    "llama": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6),
    # Real Qwen3 heads are wider than hidden_size / heads (Qwen3-0.6B: 16 x 128 for hidden 1024).
    "qwen3": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e6),
}
"""The shape ``arch_target`` gives each family: the traits a head must copy (GQA, Qwen's rope
base, Qwen3's wide heads)."""


def arch_target(arch: str, directory: Union[str, os.PathLike], *, num_layers: int = 4, seed: int = 1,
                vocab_size: int = 320):
    """A tiny untrained target of family ``arch`` (llama | qwen2 | qwen3) with a real byte-level
    BPE tokenizer and a chat template (ChatML; Llama-3's for llama), written to ``directory`` by
    ``opdplug.testing.models`` (the one builder every plugin's tests use). Returns ``(model, tokenizer)``."""
    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
    from opdplug_local import models as local

    tokenizer = build_bpe_tokenizer(vocab_size=vocab_size, template="llama3" if arch == "llama" else "chatml")
    build_model_dir(directory, arch, tokenizer, num_hidden_layers=num_layers, seed=seed, **ARCH_SHAPES[arch])
    return local.load_model(str(directory), "target").eval(), local.load_tokenizer(str(directory))


def toy_head(
    target,
    *,
    draft_vocab_size: Optional[int] = None,
    aux_layers: Optional[Sequence[int]] = None,
    always: Sequence[int] = (2,),
    seed: int = 0,
    variant: Union[str, HeadNorms] = "eagle3",
) -> Eagle3Head:
    """A randomly initialised head for ``target``; a draft vocabulary smaller than the target's
    keeps the highest ids plus ``always`` (arbitrary but deterministic). ``variant``: a name of
    ``config.VARIANTS`` or a ``config.HeadNorms``."""
    V = int(target.config.vocab_size)
    size = draft_vocab_size or V
    aux = tuple(aux_layers or default_aux_layers(target.config.num_hidden_layers))
    d2t, t2d = full_vocab(V) if size == V else build_vocab(torch.arange(V), size, always=always)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Eagle3Head(draft_config(target.config, draft_vocab_size=size, aux_layers=aux, variant=variant))
    head.set_vocab(d2t, t2d)
    head.init_from_target(target)
    return head.eval()
