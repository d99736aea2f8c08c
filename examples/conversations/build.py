"""Build the conversation-drafter example from nothing: multi-turn conversations (six topics,
held out by conversation), a byte-level BPE tokenizer trained on them (ChatML template with an
``enable_thinking`` switch, no pad token), a Qwen2-architecture target to be fine-tuned on them,
and a small Qwen2 draft model for DistillSpec.

    python examples/conversations/build.py      # writes data/conversations and models/conversations

Then ``examples/conversations/run.sh`` (or the configs/drafter_conversations_*.toml one by one).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
from opdplug_local import chatgen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/conversations", help="where train.jsonl and eval.jsonl go")
    parser.add_argument("--models", default="models/conversations", help="where target-init and drafter-init go")
    parser.add_argument("--train", type=int, default=4000, help="training conversations (default 4000)")
    parser.add_argument("--eval", type=int, default=200, help="held-out conversations (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = chatgen.write_splits(args.data, args.train, args.eval, args.seed)
    # The tokenizer learns its merges from the training conversations and the chat template's
    # fixed text, as a real target's tokenizer has seen chat data.
    texts = chatgen.corpus(args.train, args.seed) + list(chatgen.SYSTEM_PROMPTS) + ["<think>\n\n</think>\n\n"]
    tokenizer = build_bpe_tokenizer(texts, vocab_size=768)
    models = Path(args.models)
    build_model_dir(models / "target-init", "qwen2", tokenizer, hidden_size=160, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, seed=args.seed)
    build_model_dir(models / "drafter-init", "qwen2", tokenizer, hidden_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, seed=args.seed + 1)
    print(json.dumps({"data": {k: str(v) for k, v in paths.items()}, "models": str(models), "vocab": len(tokenizer)}))


if __name__ == "__main__":
    main()
