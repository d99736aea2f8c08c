"""bench/gpu_step.py is run by hand on a GPU machine; this keeps the script itself from rotting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_script_runs_on_cpu_at_tiny_size(tmp_path):
    out = tmp_path / "gpu_step.json"
    for dtype in ("float32", "bfloat16"):  # bfloat16 takes the fast path's real-valued rotary branch
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--device", "cpu", "--size", "tiny", "--dtype", dtype,
             "--batch", "2", "--prompt-len", "8", "--new-tokens", "6", "--chunk", "16", "--steps", "1", "--out", str(out)],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1].startswith("HEADLINE")
        result = json.loads(out.read_text())
        assert result["settings"]["dtype"] == dtype and all(v > 0 for v in result["phases_s"].values())


def test_gpu_step_without_cuda_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_step.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout


def test_gpu_step_smoke_mode_prints_mfu(tmp_path):
    """``--smoke``: the one-command CPU check (tiny size) prints the MFU lines and the headline."""
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MFU whole step" in proc.stdout and proc.stdout.strip().splitlines()[-1].startswith("HEADLINE tiny")
    result = json.loads(out.read_text())
    assert result["settings"]["size"] == "tiny" and 0 < result["mfu"]["step"] and result["matmul_peak"]["peak_tflops"] > 0
