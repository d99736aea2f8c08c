"""Build the conversation-drafter example from nothing: multi-turn conversations (six topics,
held out by conversation), a byte-level BPE tokenizer trained on them (ChatML template with an
``enable_thinking`` switch, no pad token), a Qwen2-architecture target to be fine-tuned, and a
small Qwen2 draft model for DistillSpec.

Two conversation files on the same questions, as a user has them: ``train.jsonl`` /
``eval.jsonl``, the conversation data the drafter is for, written by "another model" (answers
worded in ``--file-styles``), and ``target_sft_train.jsonl`` / ``target_sft_eval.jsonl``, on which
the target learns its own way of answering (``--target-styles``, another seed). So the target does
not write the file's answers, as a served model does not write its ShareGPT data's: what
``opdplug drafter regenerate`` is for.

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
    parser.add_argument("--file-styles", default="terse,sentence", help="answer styles of the conversation file")
    parser.add_argument("--target-styles", default="sentence,lead", help="answer styles the target is fine-tuned on")
    parser.add_argument("--target-size", default="160x4", help="target hidden size x layers (default 160x4)")
    parser.add_argument("--drafter-size", default="64x1", help="DistillSpec drafter hidden size x layers (default 64x1)")
    args = parser.parse_args(argv)
    (t_hidden, t_layers), (d_hidden, d_layers) = (map(int, s.split("x")) for s in (args.target_size, args.drafter_size))
    file_styles, target_styles = args.file_styles.split(","), args.target_styles.split(",")
    paths = chatgen.write_splits(args.data, args.train, args.eval, args.seed, styles=file_styles)
    sft = chatgen.write_splits(args.data, args.train, args.eval, args.seed + 1, styles=target_styles, prefix="target_sft_")
    # The tokenizer learns its merges from both files and the chat template's fixed text, as a
    # real target's tokenizer has seen chat data.
    texts = [" ".join(m["content"] for m in c["messages"]) for f in (paths["train"], sft["train"])
             for c in map(json.loads, f.read_text().splitlines())]
    texts += list(chatgen.SYSTEM_PROMPTS) + ["<think>\n\n</think>\n\n"]
    tokenizer = build_bpe_tokenizer(texts, vocab_size=768)
    models = Path(args.models)
    build_model_dir(models / "target-init", "qwen2", tokenizer, hidden_size=t_hidden, num_hidden_layers=t_layers,
                    num_attention_heads=4, num_key_value_heads=2, seed=args.seed)
    build_model_dir(models / "drafter-init", "qwen2", tokenizer, hidden_size=d_hidden, num_hidden_layers=d_layers,
                    num_attention_heads=4, num_key_value_heads=2, seed=args.seed + 1)
    print(json.dumps({"data": {k: str(v) for k, v in paths.items()}, "target_sft": {k: str(v) for k, v in sft.items()},
                      "models": str(models), "vocab": len(tokenizer)}))


if __name__ == "__main__":
    main()
