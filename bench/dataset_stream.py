"""Peak memory of reading a million-prompt JSONL: the dataset task's stream vs a Python list.

Writes a JSONL of N word problems (default 1,000,000), then in two fresh subprocesses measures
the peak resident memory each way of serving prompts adds over the process's memory after its
imports, two ways:

* private (anonymous) memory, ``RssAnon`` sampled every 5 ms: what the process itself holds
  (Python objects, Arrow buffers, arrays);
* all resident memory, ``VmHWM`` (reset through /proc/self/clear_refs) minus ``VmRSS``: the above
  plus the pages of memory-mapped files the process has touched. Those are the kernel's page
  cache, shared and reclaimable under pressure, but they do count in RSS: a stream that reads
  memory-mapped Arrow rows in a random order maps more of the file the more rows it visits.

* ``stream``: opdplug's ``dataset`` task (``datasets`` converts the file once into memory-mapped
  Arrow files in a fresh cache directory; the training stream is a per-epoch permutation, 8
  bytes a row) builds its split, then serves ``--prompts`` prompts through ``take`` in batches
  of 64, each rendered with a ChatML template and tokenized, as training would;
* ``list``: the same file read into a Python list of dicts (``json.loads`` per line), the way a
  hand-written loader holds its data, then the same prompts rendered from it.

    .venv/bin/python bench/dataset_stream.py              # 1M rows (~2-4 min on 2 cores)
    .venv/bin/python bench/dataset_stream.py --rows 100000 --prompts 2000   # quick

Prints a table whose last line is the headline (goal: stream growth <= 1/10 of the list's) and
writes runs/bench/dataset_stream.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class AnonPeak:
    """The highest ``RssAnon`` seen by a thread that samples it every 5 ms."""

    def __init__(self):
        import threading

        self.peak = rss_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_kib("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_kib("RssAnon"))


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(mode: str, path: str, prompts: int, cache: str) -> None:
    """One measurement, in its own process; prints a JSON line."""
    os.environ["HF_DATASETS_CACHE"] = cache
    from opdplug.manager import make_plugin_manager
    from opdplug.prepare import build_task
    from opdplug.testing.models import build_bpe_tokenizer
    from opdplug_local import chat

    tokenizer = build_bpe_tokenizer(vocab_size=300)
    registry = make_plugin_manager().registry
    import datasets  # noqa: F401 (imported before the baseline, as the list side imports json)

    reset_peak()
    before, anon_before = rss_kib("VmRSS"), rss_kib("RssAnon")
    sampler = AnonPeak()
    t0 = time.perf_counter()
    served = 0
    if mode == "stream":
        task = build_task(registry, "dataset", {"path": path, "eval_fraction": 0.01}, tokenizer)
        rows = len(task.train_rows)
        position = 0
        while served < prompts:
            batch, position = task.take(position, 64, seed=0)
            served += len(batch)
    else:
        with open(path) as f:
            data = [json.loads(line) for line in f]
        rows = len(data)
        for i in range(prompts):
            chat.chat_prompt_ids(tokenizer, [{"role": "user", "content": data[i % rows]["prompt"]}])
            served += 1
    seconds = time.perf_counter() - t0
    anon_peak, peak = sampler.stop(), rss_kib("VmHWM")
    print(json.dumps({"mode": mode, "rows": rows, "prompts": served, "growth_mib": (peak - before) / 1024,
                      "anon_growth_mib": (anon_peak - anon_before) / 1024, "baseline_mib": before / 1024,
                      "seconds": seconds}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="million-prompt JSONL: streamed vs a Python list")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--prompts", type=int, default=20_000, help="prompts served by each side")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "PROMPTS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return 0
    from tqdm.auto import tqdm

    from opdplug_local.wordproblems import generate

    work = Path(tempfile.mkdtemp(prefix="opd-dataset-stream-"))
    path = work / "prompts.jsonl"
    base = generate(20_000, seed=0)
    with open(path, "w") as f:
        for i in tqdm(range(args.rows), desc="write JSONL", dynamic_ncols=True):
            row = dict(base[i % len(base)])
            row["id"] = i
            f.write(json.dumps(row) + "\n")
    size_mib = path.stat().st_size / 2**20
    results = {}
    for mode in tqdm(("stream", "list"), desc="measure", dynamic_ncols=True):
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(args.prompts), str(work / "cache")],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = results["stream"]["anon_growth_mib"] / max(results["list"]["anon_growth_mib"], 1e-9)
    ratio_all = results["stream"]["growth_mib"] / max(results["list"]["growth_mib"], 1e-9)
    print(f"\n{args.rows:,} rows, {size_mib:.0f} MiB of JSONL; {args.prompts:,} prompts served by each side")
    print(f"{'method':<8} {'private growth':>15} {'RSS growth (+ mapped files)':>28} {'seconds':>9}")
    for mode in ("stream", "list"):
        r = results[mode]
        print(f"{mode:<8} {r['anon_growth_mib']:>11.1f} MiB {r['growth_mib']:>24.1f} MiB {r['seconds']:>9.1f}")
    print(f"all resident memory, memory-mapped Arrow pages included: {ratio_all:.3f}x the list's")
    print(f"dataset stream private-memory peak growth is {ratio:.3f}x a Python list's "
          f"({results['stream']['anon_growth_mib']:.0f} MiB vs {results['list']['anon_growth_mib']:.0f} MiB; goal <= 0.1x): "
          f"{'met' if ratio <= 0.1 else 'MISSED'}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_stream.json").write_text(json.dumps({"rows": args.rows, "jsonl_mib": size_mib, **results,
                                                             "ratio_private": ratio, "ratio_rss": ratio_all}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    x = [0, 1]
    ax.bar([i - 0.2 for i in x], [results[m]["anon_growth_mib"] for m in ("stream", "list")], width=0.4, label="private")
    ax.bar([i + 0.2 for i in x], [results[m]["growth_mib"] for m in ("stream", "list")], width=0.4,
           label="all RSS (+ mapped files)")
    ax.set_xticks(x, ["dataset task (stream)", "Python list"])
    ax.legend()
    ax.set_ylabel("peak memory growth (MiB)")
    ax.set_title(f"{args.rows:,}-prompt JSONL ({size_mib:.0f} MiB)")
    fig.tight_layout()
    fig.savefig(out_dir / "dataset_stream.png", dpi=120)
    print(f"wrote {out_dir / 'dataset_stream.json'} and {out_dir / 'dataset_stream.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
