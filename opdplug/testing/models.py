"""Models that stand for a user's, built locally: a byte-level BPE tokenizer trained with the
``tokenizers`` library, a chat template, and Llama / Qwen2 / Qwen3 configs from transformers
with random weights. Nothing is downloaded; everything round-trips through ``save_pretrained``
and ``from_pretrained(local_files_only=True)`` like a model directory a user brings.

For every plugin's tests and for third-party authors::

    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir

    tok = build_bpe_tokenizer(corpus, vocab_size=600)                     # ChatML, no pad token
    build_model_dir(tmp_path / "teacher", "qwen2", tok, hidden_size=64)   # a model directory

Needs ``transformers`` and ``tokenizers`` (the ``opdplug[testing]`` extra); imported lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n<tools>\\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}"
    "{{ '</tools><|im_end|>\\n' }}"
    "{% elif messages and messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] != 'system' or not loop.first %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' and enable_thinking is defined and not enable_thinking %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
"""A ChatML template in the style of Qwen's: system / user / assistant / tool turns, ``tools``
declared as JSON in the system turn, and an ``enable_thinking`` switch (False writes an empty
think block, as Qwen3's template does)."""

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
"""A Llama-3-style template: header tokens, ``<|eot_id|>`` ends a turn, BOS first."""

TEMPLATES = {
    "chatml": (CHATML_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None),
    "llama3": (LLAMA3_TEMPLATE, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>", "<|begin_of_text|>"),
}
"""Template name -> (jinja source, special tokens, end-of-turn token, BOS token or None)."""

DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Numbers like 0 1 2 3 4 5 6 7 8 9 and 42 appear.",
    "A user asks a question and the assistant answers it politely, step by step.",
    "Tom has 3 apples and buys 5 more. How many apples does Tom have? The answer is 8.",
    "def add(a, b):\n    return a + b\n# JSON: {\"name\": \"x\", \"value\": 1}",
)


def build_sentencepiece_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, *, vocab_size: int = 512,
                                  template: Optional[str] = "chatml", model_max_length: int = 2048):
    """A SentencePiece-style tokenizer as Llama-2-era models ship: BPE over ``▁``-marked words
    (Metaspace), ``<s>`` added in front of every encoding, ``</s>`` as EOS, ``<unk>`` for what
    it never saw, left padding; with ``template``, a chat template that writes ``<s>`` itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    jinja, specials, _, _ = TEMPLATES[template] if template else (None, [], None, None)
    specials = ["<unk>", "<s>", "</s>", *specials]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.train_from_iterator(list(corpus), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  clean_up_tokenization_spaces=False, model_max_length=model_max_length,
                                  padding_side="left")
    if jinja:
        out.chat_template = "{{ bos_token }}" + jinja
    return out


def build_bpe_tokenizer(
    corpus: Iterable[str] = DEFAULT_CORPUS,
    *,
    vocab_size: int = 512,
    template: Optional[str] = "chatml",
    pad_token: Optional[str] = None,
    model_max_length: int = 2048,
):
    """A byte-level BPE tokenizer trained on ``corpus``, as a ``PreTrainedTokenizerFast``.

    :param corpus: texts to learn merges from (any text works; the 256 byte symbols are always
        in the vocabulary, so nothing is ever unknown).
    :param vocab_size: target vocabulary size, special tokens included.
    :param template: ``"chatml"`` (end of turn ``<|im_end|>``, no BOS, EOS ``<|im_end|>``),
        ``"llama3"`` (BOS ``<|begin_of_text|>``, end of turn ``<|eot_id|>``), or None (no chat
        template; EOS ``<|endoftext|>``).
    :param pad_token: a pad token to declare, or None for none (as many Llama-family models ship).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    jinja, specials, end_of_turn, bos = TEMPLATES[template] if template else (None, ["<|endoftext|>"], "<|endoftext|>", None)
    specials = list(specials) + ([pad_token] if pad_token and pad_token not in specials else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs = dict(eos_token=end_of_turn, clean_up_tokenization_spaces=False, model_max_length=model_max_length)
    if bos:
        kwargs["bos_token"] = bos
    if pad_token:
        kwargs["pad_token"] = pad_token
    out = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if jinja:
        out.chat_template = jinja
    return out


ARCHITECTURES = ("llama", "qwen2", "qwen3")


def build_model(arch: str, tokenizer, *, hidden_size: int = 64, num_hidden_layers: int = 2,
                num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 0,
                seed: int = 0, tie_word_embeddings: bool = False, max_position_embeddings: int = 2048,
                head_dim: int = 0, rope_theta: float = 0.0):
    """A randomly initialised causal LM of ``arch`` (llama | qwen2 | qwen3) for ``tokenizer``,
    its ``generation_config`` carrying every stop id the tokenizer declares.

    :param head_dim: attention head width (0: ``hidden_size // num_attention_heads``); real Qwen3
        models have a wider one (Qwen3-0.6B: hidden 1024, 16 heads of 128), which llama and qwen3
        configs accept and qwen2 does not.
    :param rope_theta: rotary base (0: the config class's default; Qwen models ship 1e6)."""
    import torch
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[arch]
    if head_dim and arch == "qwen2":
        raise ValueError("qwen2 configs have no head_dim: it is always hidden_size // num_attention_heads")
    extra = {"head_dim": head_dim or hidden_size // num_attention_heads} if arch in ("qwen3", "llama") else {}
    if rope_theta:
        extra["rope_parameters"] = {"rope_type": "default", "rope_theta": float(rope_theta)}
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size or 4 * hidden_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stops = stop_ids_of(tokenizer)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def stop_ids_of(tokenizer) -> list[int]:
    """EOS and the template's end-of-turn / end-of-text tokens that the vocabulary has."""
    ids = [tokenizer.eos_token_id]
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"):
        i = tokenizer.convert_tokens_to_ids(token)
        if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id and i not in ids:
            ids.append(i)
    return [i for i in ids if i is not None]


def save_model_dir(model, tokenizer, directory: str | Path) -> Path:
    """``model`` and ``tokenizer`` saved as a Hugging Face model directory (safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_model_dir(directory: str | Path, arch: str, tokenizer, **model_kwargs) -> Path:
    """``build_model`` then ``save_model_dir``: a model directory as a user would bring one."""
    return save_model_dir(build_model(arch, tokenizer, **model_kwargs), tokenizer, directory)
