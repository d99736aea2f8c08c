#!/usr/bin/env bash
# Install SGLang 0.5.23 for CPU into its own virtual environment (default <repo>/.venv-sglang).
#
#   integrations/sglang/scripts/setup_sglang_env.sh [VENV_DIR]
#
# A separate venv because SGLang pins another torch (2.14.1, a CUDA build): here torch stays the
# CPU wheel pinned in <repo>/constraints.txt, and every pip call passes `-c constraints.txt`.
# What it does, in order:
#   1. torch (the pinned CPU wheel) first, then `sglang==0.5.23 --no-deps`;
#   2. the part of SGLang's own requirements (read from the installed dist metadata, versions
#      included) that `python -m sglang.launch_server` needs on CPU, plus four modules SGLang
#      imports that reach it only through requirements we skip (triton, dill, jsonschema,
#      torchvision); CUDA-only and optional requirements are skipped and listed in the log;
#   3. an import-only stand-in package for `sgl_kernel` (no CPU build is published; with no
#      `torch.ops.sgl_kernel` ops registered, SGLang takes its torch-native paths and never
#      calls it);
#   4. torchvision (a CUDA build on PyPI, loaded against CPU torch its C ops are missing) with
#      the two `register_fake` registrations in `_meta_registrations.py` guarded; it cannot be
#      left out: sglang/srt/configs/{deepseek_ocr,internvl_utils}.py import it at start-up;
#   5. an import smoke test, then a marker file: a re-run with the same script and constraints
#      returns at once.
# Exit status: 0 installed (or already installed); 3 with one line `SKIP: <reason>` when SGLang
# cannot be installed here (no Python >= 3.11, not Linux x86-64, PyPI or the torch wheel out of
# reach); anything else is a real failure. pip's own output goes to VENV/.opdplug-install.log.
# See integrations/sglang/SGLANG_CPU_NOTES.md for the server command and the HTTP behaviour.
set -euo pipefail

SGLANG_VERSION=0.5.23
# Requirements of sglang that the CPU server needs (names as in its metadata; the version
# specifiers are taken from the metadata). Everything else it lists is skipped.
CPU_REQUIREMENTS="aiohttp apache-tvm-ffi compressed-tensors einops fastapi gguf ipython msgspec
numpy openai orjson packaging partial-json-parser pillow psutil pybase64 pydantic
python-multipart pyzmq regex requests sentencepiece setproctitle soundfile tokenizers tqdm
transformers uvicorn uvloop xgrammar"
# Imported by SGLang on the start-up path, but reached only through requirements we skip:
#   triton (sglang.srt.utils.common; the CPU torch wheel does not bring it),
#   dill (via datasets), jsonschema (via outlines / mistral_common).
EXTRA_REQUIREMENTS="triton==3.9.0 dill jsonschema"

main() {
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
VENV="$(realpath -m "${1:-$REPO/.venv-sglang}")"
CONSTRAINTS="$REPO/constraints.txt"
MARKER="$VENV/.opdplug-sglang-installed"
LOG="$VENV/.opdplug-install.log"
T0=$(date +%s)

say() { echo "[setup_sglang_env] $*"; }
skip() { echo "SKIP: $*"; exit 3; }
die() { echo "[setup_sglang_env] ERROR: $*" >&2; exit 1; }

[ -f "$CONSTRAINTS" ] || die "missing $CONSTRAINTS"
grep -Eq '^torch==' "$CONSTRAINTS" || die "$CONSTRAINTS does not pin torch: refusing (an unpinned torch pulls GBs of CUDA packages)"
STAMP="sglang==$SGLANG_VERSION $(cat "${BASH_SOURCE[0]}" "$CONSTRAINTS" | sha256sum | cut -c1-16)"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ] && [ -x "$VENV/bin/python" ]; then
    say "already installed in $VENV ($STAMP); delete $MARKER to reinstall"
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) skip "SGLang CPU lane needs Linux x86-64 (this is $(uname -s)-$(uname -m))" ;;
esac
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
[ -n "$PYTHON" ] || skip "no python3 found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || skip "SGLang $SGLANG_VERSION needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1))"

if [ ! -x "$VENV/bin/python" ]; then
    say "creating venv $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
: > "$LOG"
pip_install() {  # pip install -c constraints.txt ARGS..., output to the log
    echo "+ pip install -c $CONSTRAINTS $*" >> "$LOG"
    "$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$@" >> "$LOG" 2>&1
}
first_error() { grep -E '^ERROR' "$LOG" | grep -v "dependency resolver" | head -1 | cut -c1-200; }

say "[1/5] torch ($(grep -E '^torch==' "$CONSTRAINTS")) and pip"
pip_install --upgrade pip || skip "pip could not upgrade itself in $VENV: $(first_error) (log: $LOG)"
pip_install "$(grep -E '^torch==' "$CONSTRAINTS")" \
    || skip "no installable $(grep -E '^torch==' "$CONSTRAINTS") wheel (local wheel folder or package index unreachable): $(first_error) (log: $LOG)"
say "      sglang==$SGLANG_VERSION --no-deps"
pip_install --no-deps "sglang==$SGLANG_VERSION" packaging \
    || skip "could not install sglang==$SGLANG_VERSION (package index unreachable?): $(first_error) (log: $LOG)"

say "[2/5] SGLang's CPU runtime requirements, from its metadata"
REQS_FILE="$VENV/.opdplug-sglang-requirements.txt"
"$PY" - "$CPU_REQUIREMENTS" > "$REQS_FILE" <<'EOF'
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

wanted = {canonicalize_name(n) for n in sys.argv[1].split()}
found, skipped = set(), []
for line in distribution("sglang").requires or []:
    req = Requirement(line)
    if req.marker is not None and "extra" in str(req.marker):
        continue                      # optional extras
    if req.marker is not None and not req.marker.evaluate():
        continue                      # other platforms
    name = canonicalize_name(req.name)
    if name in wanted:
        found.add(name)
        print(f"{req.name}{req.specifier}")
    elif name not in ("torch", "torchvision"):  # torch: the constraint; torchvision: step 4
        skipped.append(str(req.name))
missing = wanted - found
if missing:
    sys.exit(f"sglang's metadata no longer lists {sorted(missing)}: update CPU_REQUIREMENTS")
print("[setup_sglang_env]       skipped (CUDA-only or not needed on CPU): " + " ".join(sorted(skipped, key=str.lower)), file=sys.stderr)
EOF
say "      $(tr '\n' ' ' < "$REQS_FILE")"
say "      + $EXTRA_REQUIREMENTS"
# shellcheck disable=SC2086
pip_install -r "$REQS_FILE" $EXTRA_REQUIREMENTS \
    || die "installing SGLang's requirements failed: $(first_error) (log: $LOG)"

say "[3/5] import-only stand-in for sgl_kernel"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$SITE/sgl_kernel"
cat > "$SITE/sgl_kernel/__init__.py" <<'EOF'
"""Import-only stand-in for sgl_kernel, written by opdplug's setup_sglang_env.sh.

No CPU build of sgl_kernel is published. SGLang 0.5.23 imports names from it at module level on
CPU (e.g. `from sgl_kernel import copy_all_layer_kv_cache_cpu`), but with no `torch.ops.sgl_kernel`
ops registered it takes its torch-native paths (attention backend torch_native, no Intel AMX)
and never calls them. Any name imported from here is a function that raises if it is called.
"""
__version__ = "0.0.0+opdplug.stub"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} was called, but this is opdplug's import-only stand-in "
            "(no CPU build of sgl_kernel exists)"
        )

    _unavailable.__name__ = _unavailable.__qualname__ = name
    return _unavailable
EOF

say "[4/5] torchvision matching torch, --no-deps, register_fake guarded"
TV_VERSION="$("$PY" -c 'import torch; a, b, c = torch.__version__.split("+")[0].split(".")[:3]; print(f"0.{int(b) + 15}.{c}")')"
pip_install --no-deps "torchvision==$TV_VERSION" \
    || die "installing torchvision==$TV_VERSION failed: $(first_error) (log: $LOG)"
META="$SITE/torchvision/_meta_registrations.py"
sed -i -E 's/^@torch\.library\.register_fake\("(torchvision::q?nms)"\)$/@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda fn: fn))  # guarded by opdplug: CUDA torchvision on CPU torch has no C ops/' "$META"
[ "$(grep -c 'guarded by opdplug' "$META")" = 2 ] || die "could not guard register_fake in $META"
"$PY" -c 'import torchvision.transforms' >> "$LOG" 2>&1 || die "torchvision does not import (log: $LOG)"

say "[5/5] import smoke test"
SGLANG_USE_CPU_ENGINE=1 OMP_NUM_THREADS=1 "$PY" -W ignore - >> "$LOG" 2>&1 <<'EOF' || die "SGLang does not import on CPU (log: $LOG)"
import sglang
import sglang.srt.entrypoints.http_server  # noqa: F401  (fastapi, openai protocol, tokenizer manager)
import sglang.srt.managers.scheduler  # noqa: F401
import sglang.srt.model_executor.model_runner  # noqa: F401
import sglang.srt.models.llama  # noqa: F401
from sglang.srt.utils.common import cpu_has_amx_support, is_cpu

assert sglang.__version__ == "0.5.23", sglang.__version__
assert is_cpu(), "is_cpu() is False (SGLANG_USE_CPU_ENGINE=1 not seen?)"
assert not cpu_has_amx_support(), "Intel AMX backend would be chosen, but the sgl_kernel stand-in has no ops"
print("smoke ok", sglang.__version__)
EOF

echo "$STAMP" > "$MARKER"
SIZE="$(du -sh "$VENV" | cut -f1)"
say "done in $(( $(date +%s) - T0 )) s; $VENV is $SIZE"
say "serve a model with:"
echo "  SGLANG_USE_CPU_ENGINE=1 OMP_NUM_THREADS=1 $VENV/bin/python -m sglang.launch_server --model-path DIR --host 127.0.0.1 --port 30000 --device cpu --disable-overlap-schedule --dtype float32 --max-total-tokens 8192 --mem-fraction-static 0.05 --skip-server-warmup"
}

# Everything runs from main(): bash parses it whole before running, so editing this file while
# an install is under way cannot derail that install.
main "$@"
