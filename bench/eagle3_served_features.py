"""What EAGLE-3 features cost per token from an SGLang-served target against the local target.

The same batch of right-padded sequences is captured twice, alternating ``--reps`` times: by
``eagle3.served.sglang_capture`` (a real SGLang 0.5.23 server in capture-only mode, HTTP + JSON:
auxiliary hidden states, the draft vocabulary's log-probs, top-1 id, token log-probs) and by the
local capture the core loop runs (``eagle3.capture.capture``: one Hugging Face forward). Reports
seconds per 1000 tokens for each, the ratio, the bytes on the wire per token, and the largest
differences between the two (features, draft-vocabulary log-probs). The server and this process
get ``--threads`` CPU threads each. Needs the SGLang environment (``make sglang-env``).

    .venv/bin/python bench/eagle3_served_features.py          # about 2 minutes on 2 CPU cores
Writes runs/bench/eagle3_served_features.json; the last printed line is the headline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="qwen3", choices=["llama", "qwen2", "qwen3"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2000, help="BPE vocabulary of the target")
    ap.add_argument("--draft-vocab", type=int, default=512)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "eagle3_served_features.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from opdplug.testing.models import build_bpe_tokenizer, build_model_dir
    from opdplug_drafters.eagle3.capture import capture
    from opdplug_drafters.eagle3.config import default_aux_layers, sglang_layer_ids
    from opdplug_drafters.eagle3.served import served_source, sglang_capture
    from opdplug_local import models as local
    from opdplug_sglang.features import server_flags
    from opdplug_sglang.server import launch

    tmp = Path(tempfile.mkdtemp(prefix="eagle3-served-"))
    corpus = [f"Line {i}: the assistant answers question {i * 7} with {i * 3} steps and some code x{i} = {i}." for i in range(400)]
    tok = build_bpe_tokenizer(corpus, vocab_size=args.vocab)
    shape = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2)
    build_model_dir(tmp / "target", args.arch, tok, **shape)
    model = local.load_model(str(tmp / "target"), "target").eval()
    V = len(tok)
    aux = default_aux_layers(args.layers)
    draft_ids = torch.arange(V - args.draft_vocab, V)  # any ids: the cost depends on the count
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (args.rows, args.length), generator=g)
    lengths = torch.randint(args.length // 2, args.length + 1, (args.rows,), generator=g)
    mask = (torch.arange(args.length)[None] < lengths[:, None]).long()
    ids = ids * mask
    tokens = int(mask.sum())

    print(f"target: {args.arch}, hidden {args.hidden}, {args.layers} layers, vocab {V}; aux layers {list(aux)}; "
          f"{args.rows} rows, {tokens} tokens; draft vocabulary {args.draft_vocab}", flush=True)
    t0 = time.perf_counter()
    server = launch(tmp / "target", extra_args=server_flags(sglang_layer_ids(aux)), threads=args.threads, timeout_s=600)
    print(f"server up in {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        source = served_source([server.url], aux, hidden_size=args.hidden, batch_size=args.rows, vocab_size=V)
        sglang_capture(source, ids[:1], mask[:1], mask[:1], aux, draft_ids)  # warm-up
        served_s, local_s = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            served, _ = sglang_capture(source, ids, mask, mask, aux, draft_ids)
            served_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref, _ = capture(model, ids, mask, mask, aux, draft_ids)
            local_s.append(time.perf_counter() - t)
        # Bytes of one answer of one row, as the server sent it (JSON).
        from opdplug_sglang.features import features_payload

        row = ids[0, :int(lengths[0])].tolist()
        answer = source.client.post("/generate", features_payload(row, draft_ids.tolist()))
        wire = len(json.dumps(answer)) / len(row)
    finally:
        server.stop()
    real = mask.bool()
    feat_err = float((served.features_B_L_A[real] - ref.features_B_L_A[real]).abs().max())
    lp_err = float((torch.log_softmax(served.target_logits_B_L_Vd, -1)[real]
                    - torch.log_softmax(ref.target_logits_B_L_Vd, -1)[real]).abs().max())
    result = {
        "arch": args.arch, "hidden": args.hidden, "layers": args.layers, "vocab": V, "draft_vocab": args.draft_vocab,
        "tokens": tokens, "served_s": served_s, "local_s": local_s,
        "served_ms_per_1k_tokens": 1000 * statistics.median(served_s) / tokens * 1000,
        "local_ms_per_1k_tokens": 1000 * statistics.median(local_s) / tokens * 1000,
        "wire_bytes_per_token": wire, "max_abs_diff_features": feat_err, "max_abs_diff_draft_logprobs": lp_err,
        "threads": args.threads,
    }
    result["ratio"] = result["served_ms_per_1k_tokens"] / result["local_ms_per_1k_tokens"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"served (SGLang, HTTP)  {result['served_ms_per_1k_tokens']:8.1f} ms per 1000 tokens  (runs: "
          + ", ".join(f"{s:.2f}" for s in served_s) + " s)")
    print(f"local  (HF forward)    {result['local_ms_per_1k_tokens']:8.1f} ms per 1000 tokens  (runs: "
          + ", ".join(f"{s:.2f}" for s in local_s) + " s)")
    print(f"max |served - local|: features {feat_err:.1e}, draft-vocabulary log-probs {lp_err:.1e}; "
          f"{wire / 1024:.1f} KiB of JSON per token")
    print(f"EAGLE-3 features from SGLang cost {result['ratio']:.1f}x the local capture per token "
          f"({result['served_ms_per_1k_tokens']:.0f} vs {result['local_ms_per_1k_tokens']:.0f} ms per 1000 tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
