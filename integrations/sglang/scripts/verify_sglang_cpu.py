"""Check, against a real SGLang server on CPU, the HTTP behaviour opdplug's SGLang client relies on.

Run it with the project's main venv (it needs ``opdplug_local.tiny``, torch and transformers for the
reference forward pass); the server runs from the separate SGLang venv made by
``setup_sglang_env.sh``. The HTTP side uses only the standard library (``urllib``, ``json``)::

    .venv/bin/python integrations/sglang/scripts/verify_sglang_cpu.py \
        [--sglang-venv .venv-sglang] [--port 30123] [--record /tmp/sglang_record.json]

It builds a tiny Llama teacher with ``opdplug_local.tiny`` (and a perturbed copy for the weight update),
starts the server, runs every check, prints one line per finding, writes every request/response
pair to ``--record``, kills the server and exits 0 if every check passed (1 otherwise, 3 with a
``SKIP:`` line when the SGLang venv is missing). Findings are summarised in SGLANG_CPU_NOTES.md.
The checks are in ``sglang_verify_scoring.py`` and ``sglang_verify_serving.py``, the HTTP client,
the server process and the reference forward pass in ``sglang_verify_harness.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from sglang_verify_harness import FAILURES, RECORD, Case, Http, Server, hf_logprobs, tree_rss_mib
from sglang_verify_scoring import check_batch_scoring, check_radix_cache, check_scoring
from sglang_verify_serving import check_endpoints, check_sampling, check_weight_update, run_second_server_checks

REPO = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------ reference
def build_models(workdir: Path):
    import torch

    from opdplug_local import tiny

    words = [str(i) for i in range(10)] + list("abcdefghij") + ["+", "=", ";", "sum", "is"]
    tok = tiny.build_tokenizer(words)
    m0 = tiny.build_model("teacher", tok, seed=0)
    tiny.save_pretrained_pair(m0, tok, workdir / "m0")
    m1 = tiny.build_model("teacher", tok, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in m1.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    tiny.save_pretrained_pair(m1, tok, workdir / "m1")
    return tok, m0.eval(), m1.eval()


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sglang-venv", default=str(REPO / ".venv-sglang"))
    ap.add_argument("--port", type=int, default=30123)
    ap.add_argument("--record", default=None, help="write every request/response here (JSON)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-second-server", action="store_true")
    args = ap.parse_args()

    python = str(Path(args.sglang_venv) / "bin" / "python")
    if not os.access(python, os.X_OK):
        print(f"SKIP: no SGLang venv at {args.sglang_venv} (run integrations/sglang/scripts/setup_sglang_env.sh)")
        return 3
    import torch

    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="opd-sglang-"))
    work.mkdir(parents=True, exist_ok=True)
    tok, m0, m1 = build_models(work)
    eos = tok.eos_token_id
    print(f"models in {work} (vocab {len(tok)}, eos {eos})")

    srv = Server(python, str(work / "m0"), args.port, work / "server1.log")
    try:
        startup = srv.wait_ready()
        rss = tree_rss_mib(srv.proc.pid)
        RECORD["startup"] = {"seconds_to_health_generate_200": round(startup, 1),
                             "rss_mib_by_pid": {str(k): round(v) for k, v in rss.items()},
                             "rss_mib_total": round(sum(rss.values())), "cmd": srv.cmd}
        print(f"server ready in {startup:.1f}s, RSS {sum(rss.values()):.0f} MiB over {len(rss)} processes")
        run_checks(srv.http, tok, m0, m1, work, eos)
        rss = tree_rss_mib(srv.proc.pid)
        RECORD["rss_after_checks_mib_total"] = round(sum(rss.values()))
    finally:
        srv.stop()

    if not args.skip_second_server:
        srv = Server(python, str(work / "m0"), args.port, work / "server2.log",
                     extra=["--disable-radix-cache", "--enable-return-hidden-states"])
        try:
            srv.wait_ready()
            run_second_server_checks(srv.http, m0)
        finally:
            srv.stop()

    if args.record:
        Path(args.record).write_text(json.dumps(RECORD, indent=1))
        print(f"record written to {args.record}")
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


def run_checks(http: Http, tok, m0, m1, work: Path, eos: int) -> None:
    prompt = [1, 4, 5, 6, 7]          # <bos> + 4 tokens: P = 5
    completion = [8, 9, 10]
    ids = prompt + completion          # L = 8
    case = Case(tok=tok, m0=m0, m1=m1, work=work, eos=eos, prompt=prompt, ids=ids, lp0=hf_logprobs(m0, ids),
                watch=[2, 5, 9])
    check_scoring(http, case)          # a. scoring, off-by-one
    check_batch_scoring(http, case)
    check_radix_cache(http, case)
    check_sampling(http, case)         # b. sampling
    check_endpoints(http, case)        # c. endpoints
    check_weight_update(http, case)


if __name__ == "__main__":
    sys.exit(main())
