#!/usr/bin/env bash
# GPU check for dpl-study: run this on a GPU machine, from a copy of the repository.
#
#   bash bench/gpu_check.sh            # full check, < 8 min on one GPU
#   bash bench/gpu_check.sh --quick    # fewer networks, one study fraction
#
# 1. finds a Python with torch: $DPL_PYTHON, else ./.venv, else a system python that imports torch (a venv
#    .venv-gpucheck is made on top of it with --system-site-packages, so its torch/torchvision are used);
#    with none of these it makes .venv-gpucheck and pip-installs torch/torchvision (needs the network);
# 2. pip install -e . --no-deps, then whatever of the project's dependencies is missing (failures are
#    reported and only skip the parts that need them);
# 3. runs bench/gpu_check.py: CUDA correctness (distances and gradients equal the CPU ones), loss-network
#    throughput with and without bf16 autocast, trials/hour of the smoke study at 1, 2 and 4 trials per GPU
#    with peak GPU memory per trial. Without a CUDA device the CUDA parts are skipped with a message;
# 4. with CUDA: bench/memory_estimate.py --device cuda --full-batch (the memory estimate that sizes a trial's
#    GPU share against torch's allocated/reserved peak and the device's used memory), GPU_CHECK_MEMORY_S = 150 s.
#
# Offline GPU machines: wheels of the missing packages placed in .whl/ (built by bench/gpu_wheels.sh) are
# installed into a private folder ($GPU_CHECK_SITE, default /tmp/dpl-gpu-site) on PYTHONPATH, nothing else.
#
# Everything goes to stdout. Exit status: 0 ok, 1 correctness failure, 2 no usable Python/torch,
# 124 the Python part ran past its limit (what is left of GPU_CHECK_TOTAL_S = 540 s after the setup and the
# memory part, or GPU_CHECK_TIMEOUT_S). pip steps are limited to GPU_CHECK_PIP_LIMIT_S = 60 s each.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
START=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
VENV=.venv-gpucheck
PIP_LIMIT_S=${GPU_CHECK_PIP_LIMIT_S:-60}
TOTAL_S=${GPU_CHECK_TOTAL_S:-540}   # the whole check, setup included, stays under 9 minutes
MEMORY_S=${GPU_CHECK_MEMORY_S:-150}  # of which the memory estimate's part (CUDA only)
export PIP_RETRIES=1 PIP_TIMEOUT=10   # offline machines fail fast instead of retrying for minutes

log "host $(hostname), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,mig.mode.current --format=csv 2>&1 | sed 's/^/  /'
else
  log "no nvidia-smi on this machine"
fi

has_torch() { "$1" -c "import torch, torchvision" >/dev/null 2>&1; }

PY=""
if [ -n "${DPL_PYTHON:-}" ]; then
  PY=$DPL_PYTHON
  has_torch "$PY" || { log "FAIL DPL_PYTHON=$PY cannot import torch and torchvision"; exit 2; }
elif [ -x .venv/bin/python ] && has_torch .venv/bin/python; then
  PY=.venv/bin/python
elif [ -x $VENV/bin/python ] && has_torch $VENV/bin/python; then
  PY=$VENV/bin/python
else
  for cand in python3.12 python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && has_torch "$cand"; then
      log "$cand has torch: making $VENV on top of it (--system-site-packages)"
      if "$cand" -m venv --system-site-packages $VENV && has_torch $VENV/bin/python; then
        PY=$VENV/bin/python
      else  # e.g. $cand is itself a venv's python: its packages are not "system" ones
        log "$VENV does not see $cand's torch; using $cand itself"
        rm -rf $VENV
        PY=$(command -v "$cand")
      fi
      break
    fi
  done
  if [ -z "$PY" ]; then
    cand=$(command -v python3.11 || command -v python3 || true)
    [ -n "$cand" ] || { log "FAIL no python3 on this machine"; exit 2; }
    log "no python with torch found: making $VENV with $cand and installing torch/torchvision (needs the network)"
    "$cand" -m venv $VENV || { log "FAIL cannot make a venv"; exit 2; }
    PY=$VENV/bin/python
    timeout "$PIP_LIMIT_S" $PY -m pip install -q "torch<=2.14.1" "torchvision<=0.29.1" \
      || { log "FAIL cannot install torch (offline?); set DPL_PYTHON to a python with torch"; exit 2; }
  fi
fi
log "python: $PY ($($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"

# carried wheels (an offline GPU machine): into a private folder, never over the machine's own packages
if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=${GPU_CHECK_SITE:-/tmp/dpl-gpu-site}
  if timeout "$PIP_LIMIT_S" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target "$SITE" .whl/*.whl >/dev/null 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
    log "installed $(ls .whl/*.whl | wc -l) carried wheels from .whl/ into $SITE (on PYTHONPATH)"
  else
    log "WARN could not install the wheels in .whl/ into $SITE"
  fi
fi

# the project itself (no dependency resolution: torch stays as it is)
if ! $PY -c "import study.cli, trainables" >/dev/null 2>&1 || ! $PY -m pip show dpl-study >/dev/null 2>&1; then
  if timeout "$PIP_LIMIT_S" $PY -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1 \
     || timeout "$PIP_LIMIT_S" $PY -m pip install -q -e . --no-deps >/dev/null 2>&1; then
    log "pip install -e . --no-deps: done"
  else
    log "WARN pip install -e . failed; using the repository through PYTHONPATH"
  fi
fi

# whatever of the dependencies is missing (import name=pip requirement; looked up without importing)
read -r -a missing < <($PY - <<'EOF'
import importlib.util
reqs = {"ray": "ray[tune]>=2.40", "mlflow": "mlflow==3.17.2", "optuna": "optuna>=3.6", "pandas": "pandas>=2.0",
        "scipy": "scipy>=1.11", "matplotlib": "matplotlib>=3.7", "numpy": "numpy>=1.26", "PIL": "pillow>=10",
        "yaml": "pyyaml>=6", "skimage": "scikit-image>=0.22", "lpips": "lpips==0.1.4"}
print(" ".join(r for m, r in reqs.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing missing packages: ${missing[*]}"
  if ! timeout "$PIP_LIMIT_S" $PY -m pip install -q "${missing[@]}" 2>&1 | tail -3; then
    log "WARN could not install all of them (offline?); the sections that need them are skipped"
  fi
else
  log "dependencies: all present"
fi

CUDA=$($PY -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
[ "$CUDA" = 1 ] || MEMORY_S=0
LIMIT=${GPU_CHECK_TIMEOUT_S:-$(( TOTAL_S - MEMORY_S - ($(date +%s) - START) ))}
[ "$LIMIT" -lt 120 ] && LIMIT=120
export GPU_CHECK_BUDGET_S=$(( LIMIT - 40 ))   # gpu_check.py starts no new study run after this
log "running bench/gpu_check.py $* (limit ${LIMIT} s)"
timeout "$LIMIT" $PY -u bench/gpu_check.py "$@"
rc=$?
[ $rc -eq 124 ] && log "FAIL bench/gpu_check.py ran past ${LIMIT} s"
if [ "$MEMORY_S" -gt 0 ]; then
  log "running bench/memory_estimate.py --device cuda --full-batch (limit ${MEMORY_S} s)"
  timeout "$MEMORY_S" $PY -u bench/memory_estimate.py --device cuda --full-batch \
    || log "WARN bench/memory_estimate.py ended with $? (124: ran past ${MEMORY_S} s)"
fi
log "exit status $rc (0 ok, 1 correctness failure, 2 environment) after $(( $(date +%s) - START )) s"
exit $rc
