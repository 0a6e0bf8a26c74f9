#!/usr/bin/env bash
# GPU check of the pure-torch parts (remap, combine, clustering), under 10 minutes.
#
# For a CUDA machine where only torch is installed: no torchrec, no fbgemm, no network.
# The parts checked import torch only (torchrec_lhf/modules/remap_ops.py,
# torchrec_lhf/clustering), so nothing is pip-installed; torchrec_lhf's top-level
# __init__ imports torchrec, so when torchrec is missing a sitecustomize in a temporary
# folder registers the package without running it (subprocesses inherit it through
# PYTHONPATH). Prints one JSON object (benchmarks/gpu_check.py: sync, the serving operator,
# remap, its profile and torch.compile, combine, clustering, pytest tests/clustering);
# each step also goes to stderr as it ends (one JSON line); about 2 minutes on an H200
# (docs/PERFORMANCE.md, "On a GPU"). Exits 0 with a "skipped" JSON when CUDA is absent.
#
# Usage: benchmarks/gpu_check.sh [--cpu]     (--cpu: a dry run of the same steps on CPU)
#        PYTHON=/path/to/python benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
device=cuda
if [[ ${1:-} == "--cpu" ]]; then
  device=cpu
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--cpu]" >&2
  exit 2
fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo '{"gpu_check": "skipped", "reason": "torch is not installed for '"$PYTHON"'"}'
  exit 1
fi
if [[ $device == cuda ]] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo '{"gpu_check": "skipped", "reason": "CUDA is not available; run with --cpu for a dry run"}'
  exit 0
fi

shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import torchrec" 2>/dev/null || [[ ${LHF_GPU_CHECK_SHIM:-0} == 1 ]]; then
  cat > "$shim/sitecustomize.py" <<PY
import sys, types
_pkg = types.ModuleType("torchrec_lhf")
_pkg.__path__ = ["$PWD/torchrec_lhf"]  # subpackages import; __init__ (torchrec) does not run
sys.modules.setdefault("torchrec_lhf", _pkg)
PY
  export PYTHONPATH="$shim:$PYTHONPATH"
fi
exec timeout 570 "$PYTHON" -m benchmarks.gpu_check --device "$device"
