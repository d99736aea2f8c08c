"""Build the word-problem example from nothing: the data, a byte-level BPE tokenizer trained on
it (ChatML template, no pad token), and two randomly initialised model directories that stand
for the ones a user brings: a Qwen2-architecture teacher and a 4x smaller Llama student.

    python examples/wordproblems/build.py            # writes data/wordproblems and models/wordproblems

Then follow the README's "Distill your own model": SFT the teacher, distill the student, eval.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
from opdplug_local.wordproblems import write_jsonl


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/wordproblems", help="where train.jsonl and eval.jsonl go")
    parser.add_argument("--models", default="models/wordproblems", help="where the teacher and student directories go")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = Path(args.data)
    write_jsonl(data, args.train, args.seed, eval_fraction=0.025)
    corpus = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    tokenizer = build_bpe_tokenizer([r["prompt"] + "\n" + r["solution"] for r in corpus], vocab_size=1024)
    models = Path(args.models)
    build_model_dir(models / "teacher-init", "qwen2", tokenizer, hidden_size=192, num_hidden_layers=4,
                    num_attention_heads=6, num_key_value_heads=2, seed=args.seed)
    build_model_dir(models / "student-init", "llama", tokenizer, hidden_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, seed=args.seed + 1)
    print(json.dumps({"data": str(data), "models": str(models), "vocab": len(tokenizer), "train_rows": len(corpus)}))


if __name__ == "__main__":
    main()
