"""Tiny models and tokenizers that opdplug builds itself, offline.

The built-in tasks never download anything: the tokenizer is a word-level vocabulary built with the
``tokenizers`` library from the task's words, and the models are small Llama configs initialised
from a seed. Both round-trip through ``save_pretrained`` / ``AutoModel.from_pretrained`` with
``local_files_only=True``, so a checkpoint written here loads anywhere transformers runs.

Llama (not Qwen2) on purpose: transformers 5 forces ``Qwen2Tokenizer`` on Qwen2 configs, which
breaks a locally built word-level tokenizer (decoded text loses its spaces).
"""
from __future__ import annotations

import os
from typing import Union

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens, in id order: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3."""

SIZES: dict[str, dict] = {
    # ~0.53M parameters. Learns SumChain (lengths 2..8) from reference traces to 100% greedy
    # accuracy in 400 AdamW steps of batch 64 at lr 1e-3 (about a minute on a 2-core CPU; see
    # bench/feasibility_sumchain.py). 4 layers learn in as many steps at twice the cost.
    "teacher": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=512,
    ),
    # 4x fewer parameters (~0.13M) and FLOPs per token: the distillation target. NB it can also
    # learn SumChain 2..8 alone (100% after ~400 SFT steps at batch 64).
    "student": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=256,
    ),
    # For unit tests: builds and runs in milliseconds. Two KV heads exercise grouped-query attention.
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64,
    ),
}
"""Named Llama shapes (keyword arguments of ``LlamaConfig``). ``build_model`` also accepts a dict."""

DEFAULT_MAX_POSITIONS = 1024
"""Context length of built models: SumChain at 16 steps needs 85 tokens, a multi-turn agent
episode of the agents plugin a few hundred."""


def build_tokenizer(words: list[str]) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (deduplicated, order kept) after the special tokens.

    Text is split on whitespace (and punctuation runs, via the ``Whitespace`` pre-tokenizer), so
    every word must be a single pre-token, e.g. ``"a"``, ``"7"``, ``";"``. With
    ``add_special_tokens=True`` (the default) ``<bos>`` is prepended; ``<eos>`` never is (the
    model must generate it). Decoding joins tokens with single spaces, so
    ``decode(encode(text, add_special_tokens=False)) == " ".join(text.split())``.
    """
    vocab: dict[str, int] = {}
    for word in (*SPECIAL_TOKENS, *words):
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    # WordPiece decoder with an impossible prefix joins tokens with spaces and, unlike the
    # default decoder, survives serialisation explicitly; cleanup off so " ;" stays as it is.
    tok.decoder = decoders.WordPiece(prefix="\u0000##", cleanup=False)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=DEFAULT_MAX_POSITIONS,
    )


def _resolve_size(size: Union[str, dict]) -> dict:
    """The ``LlamaConfig`` keyword arguments for a named size or an explicit dict."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
        return dict(SIZES[size])
    return dict(size)


def build_model(
    size: Union[str, dict], tokenizer, seed: int, *, max_position_embeddings: int = DEFAULT_MAX_POSITIONS
) -> transformers.LlamaForCausalLM:
    """A freshly initialised float32 ``LlamaForCausalLM`` for ``tokenizer``, deterministic in ``seed``.

    ``size`` is a key of ``SIZES`` or a dict of ``LlamaConfig`` overrides. Embeddings are untied
    (so the lm-head is a separate parameter a distillation loss can read), and pad/bos/eos ids are
    taken from the tokenizer. The global RNG state is left untouched.
    """
    kwargs = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
    )
    kwargs.update(_resolve_size(size))
    config = transformers.LlamaConfig(**kwargs)
    # fork_rng: seeding must not perturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(torch.float32)


def save_pretrained_pair(model, tokenizer, path: Union[str, os.PathLike]) -> None:
    """Write ``model`` (safetensors) and ``tokenizer`` side by side into the folder ``path``."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load_pretrained(path: Union[str, os.PathLike]):
    """Load ``(model, tokenizer)`` written by ``save_pretrained_pair`` (Auto classes, no network).

    Any causal LM folder with a tokenizer works, e.g. a standalone drafter checkpoint.
    """
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=torch.float32
    )
    return model, tokenizer


def count_parameters(model, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (each shared tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def flops_per_token(model, training: bool) -> int:
    """Approximate FLOPs per token: ``2 N`` for a forward pass, ``6 N`` for forward + backward.

    Convention (Kaplan et al. 2020, as used for scaling laws): ``N`` counts the parameters that
    take part in matrix multiplies, i.e. every parameter except the input embedding table (a
    lookup, no FLOPs), but including the lm-head (a real ``[H, V]`` matmul). Norm weights are
    included for simplicity (negligible). Attention's ``L``-dependent score/value products are
    ignored: for the short sequences used here they are a few percent.
    """
    inner = model
    while hasattr(inner, "module"):  # DDP / accelerate wrappers
        inner = inner.module
    embed = inner.get_input_embeddings().weight
    lm_head = inner.get_output_embeddings()
    n = count_parameters(inner)
    if lm_head is None or lm_head.weight is not embed:
        n -= embed.numel()  # untied: the table is a lookup; the separate lm-head stays counted
    return (6 if training else 2) * n
