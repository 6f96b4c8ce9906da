#!/usr/bin/env bash
# Build .whl/: the wheels an offline GPU machine needs to run bench/gpu_check.sh.
#
#   bash bench/gpu_wheels.sh [OUTDIR] [--ray V] [--optuna V] [--mlflow V] [--lpips V] [--limit-mb N] [--keep-work]
#
# Why: the GPU machine lent to this project (x86_64, Python 3.12; see /work/.library/device/KINDS.md, nvidia-h200)
# has no network. It has torch, torchvision, numpy, pandas, scipy, scikit-image and more, but not ray, mlflow,
# optuna or lpips. The `run` tool copies the working tree plus the "carried" ignored folders, at most 64 MiB in
# all, so the wheels of those four packages and of what they need beyond the machine's own packages must fit in
# well under 64 MiB (the Ray wheel alone is 79 MB as published).
#
# How it is used: run this here (it needs the network to PyPI), then call the `run` tool with carry [".whl"] and
# the command `bash bench/gpu_check.sh`, which installs every wheel in .whl/ into a private folder on PYTHONPATH
# (--no-index --no-deps, nothing over the machine's own packages).
#
# What it does:
# 1. resolves the closure of ray[tune], mlflow, optuna and lpips for CPython 3.12 manylinux x86_64 with
#    `pip install --dry-run --report` (binary wheels only). Versions: --NAME V or $GPU_WHEELS_<NAME>_VERSION, else
#    an exact pin in pyproject.toml (mlflow, lpips), else the version installed in .venv (ray, optuna).
#    pip evaluates environment markers with the interpreter running it ($GPU_WHEELS_PYTHON, default python3),
#    only the wheel tags with --python-version 3.12;
# 2. drops what the GPU machine already has ($TARGET_HAS below) and never carries torch, torchvision, triton,
#    nvidia-*;
# 3. `pip download --no-deps --only-binary=:all:` the rest (same platform flags), checked against the sha256
#    the resolver reported;
# 4. repacks to fit: ray without ray/jars/, ray/dashboard/client/build/, ray/rllib/, ray/serve/, ray/llm/; mlflow
#    without mlflow/server/js/build/ (the UI); `strip --strip-unneeded` on the ELF files of ray and sqlalchemy
#    (both ship debug symbols); a file that mlflow, mlflow-skinny and mlflow-tracing all ship (same path, same
#    bytes) kept in one wheel only (mlflow-tracing first, then mlflow-skinny). A repacked wheel keeps its file
#    name, gets a regenerated RECORD (and WHEEL tags that match its file name) and deflate level 9; the other
#    wheels are the published files, byte for byte;
# 5. prints each wheel with its size and the total; exit 1 if the total is over --limit-mb (default
#    $GPU_WHEELS_LIMIT_MB or 58, MB = 10^6 bytes) or a check failed: OUTDIR is then left as it was and the new
#    wheels stay in the work folder. Otherwise the *.whl in OUTDIR (default .whl) are replaced by the new set.
#
# Exit status: 0 ok, 1 over the limit or a check failed, 2 bad arguments, or resolving/downloading failed.
# Takes 2-3 minutes (about 117 MB to download; pip's cache helps); run it under `nice` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
START=$(date +%s)
log() { echo "[gpu_wheels $(( $(date +%s) - START ))s] $*"; }
die() { log "FAIL $1"; exit "${2:-2}"; }

# --- settings -------------------------------------------------------------------------------------------
PY=${GPU_WHEELS_PYTHON:-python3}
PYVER=${GPU_WHEELS_PYTHON_VERSION:-3.12}
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)
RAY_EXTRAS=${GPU_WHEELS_RAY_EXTRAS:-tune}
LIMIT_MB=${GPU_WHEELS_LIMIT_MB:-58}
# "Python packages already there" for nvidia-h200 in /work/.library/device/KINDS.md (read 2026-11-17)
TARGET_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"
TARGET_HAS=${GPU_WHEELS_TARGET_HAS:-$TARGET_HAS}
NEVER="torch torchvision triton nvidia-*"          # never carried, whatever the list above says (shell patterns)
STRIP="ray sqlalchemy"                             # wheels whose ELF files get strip --strip-unneeded
DROP="ray:ray/jars/ ray:ray/dashboard/client/build/ ray:ray/rllib/ ray:ray/serve/ ray:ray/llm/
mlflow:mlflow/server/js/build/"                    # wheel:path prefix left out of it
DEDUP="mlflow-tracing mlflow-skinny mlflow"        # a file shipped by several: kept in the first that has it

# --- arguments ------------------------------------------------------------------------------------------
OUTDIR=""
KEEP_WORK=${GPU_WHEELS_KEEP_WORK:-0}
declare -A VER=([ray]=${GPU_WHEELS_RAY_VERSION:-} [mlflow]=${GPU_WHEELS_MLFLOW_VERSION:-}
                [optuna]=${GPU_WHEELS_OPTUNA_VERSION:-} [lpips]=${GPU_WHEELS_LPIPS_VERSION:-})
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --ray|--mlflow|--optuna|--lpips) [ $# -ge 2 ] || die "$1 needs a version"; VER[${1#--}]=$2; shift 2 ;;
    --limit-mb) [ $# -ge 2 ] || die "$1 needs a number"; LIMIT_MB=$2; shift 2 ;;
    --keep-work) KEEP_WORK=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$OUTDIR" ] || die "one OUTDIR only (got $OUTDIR and $1)"; OUTDIR=$1; shift ;;
  esac
done
OUTDIR=${OUTDIR:-.whl}
[[ $LIMIT_MB =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--limit-mb: not a number: $LIMIT_MB"
command -v "$PY" >/dev/null 2>&1 || die "no $PY (set GPU_WHEELS_PYTHON)"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip"
command -v strip >/dev/null 2>&1 || die "no strip (binutils)"

# version of NAME: pyproject.toml's exact pin (NAME==V or NAME[extras]==V), else the one installed in .venv
version_of() {
  local name=$1 v d
  v=$(grep -oE "\"$name(\[[^]\"]*\])? *== *[^\",;[:space:]]+" pyproject.toml 2>/dev/null | head -1 | sed -E 's/.*== *//') || true
  if [ -z "$v" ]; then
    d=$(ls -d .venv/lib/python3*/site-packages/"$name"-*.dist-info 2>/dev/null | head -1) || true
    [ -n "$d" ] && { d=$(basename "$d" .dist-info); v=${d#"$name"-}; }
  fi
  echo "$v"
}
for name in ray mlflow optuna lpips; do
  [ -n "${VER[$name]}" ] || VER[$name]=$(version_of "$name")
  [ -n "${VER[$name]}" ] || die "no version for $name: no exact pin in pyproject.toml, none in .venv; pass --$name V"
done
REQS=("ray[$RAY_EXTRAS]==${VER[ray]}" "mlflow==${VER[mlflow]}" "optuna==${VER[optuna]}" "lpips==${VER[lpips]}")
PIPFLAGS=(--disable-pip-version-check --only-binary=:all: --python-version "$PYVER" --implementation cp)
for p in "${PLATFORMS[@]}"; do PIPFLAGS+=(--platform "$p"); done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_wheels.XXXXXX")
cleanup() { if [ "$KEEP_WORK" = 1 ]; then log "work folder kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
log "requirements: ${REQS[*]} (CPython $PYVER, ${PLATFORMS[*]}; resolved with $PY $("$PY" -c 'import sys; print(sys.version.split()[0])'))"
log "output: $OUTDIR, limit ${LIMIT_MB} MB, work folder $WORK"

# --- the Python part (selection, download check, repack, summary) -----------------------------------------
cat > "$WORK/gw.py" <<'PYEOF'
import base64, csv, fnmatch, hashlib, io, itertools, json, os, re, shutil, subprocess, sys, tempfile, zipfile

def norm(name):  # PEP 503
    return re.sub(r"[-_.]+", "-", name).lower()

def wheel_parts(fname):  # name, version, tags (expanded)
    parts = fname[:-len(".whl")].split("-")
    py, abi, plat = parts[-3:]
    tags = ["-".join(t) for t in itertools.product(py.split("."), abi.split("."), plat.split("."))]
    return norm(parts[0]), parts[1], tags

def b64hash(data, alg="sha256"):
    return f"{alg}=" + base64.urlsafe_b64encode(hashlib.new(alg, data).digest()).rstrip(b"=").decode()

def select(report, target_has, never, keep_out, expected_out):
    """The report's packages less the machine's own and the never-carried ones."""
    have = {norm(n) for n in target_has.split()}
    pats = never.split()
    keep, dropped = [], []
    for item in json.load(open(report))["install"]:
        name, ver = norm(item["metadata"]["name"]), item["metadata"]["version"]
        if name in have or any(fnmatch.fnmatch(name, p) for p in pats):
            dropped.append(name)
            continue
        info = item["download_info"]
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256") or \
            info.get("archive_info", {}).get("hash", "=").split("=", 1)[1]
        keep.append((name, ver, info["url"].rsplit("/", 1)[-1], sha))
    with open(keep_out, "w") as f:
        f.writelines(f"{n}=={v}\n" for n, v, _, _ in keep)
    with open(expected_out, "w") as f:
        json.dump(keep, f)
    print(f"  closure {len(keep) + len(dropped)} packages: {len(keep)} to carry, {len(dropped)} the GPU machine has "
          f"or never carried: {' '.join(sorted(dropped))}")

def check_download(dl, expected):
    want = {fn: sha for _, _, fn, sha in json.load(open(expected))}
    got = sorted(f for f in os.listdir(dl) if f.endswith(".whl"))
    bad = sorted(set(want) ^ set(got))
    for fn in got:
        if fn in want and want[fn] and hashlib.sha256(open(os.path.join(dl, fn), "rb").read()).hexdigest() != want[fn]:
            bad.append(f"{fn} (sha256 differs from the resolver's)")
    if bad:
        print("  downloaded set differs from the resolved one: " + ", ".join(bad))
        sys.exit(1)
    print(f"  {len(got)} wheels downloaded, each the file the resolver chose (sha256 checked)")

def strip_elf(data, tmp):
    src, dst = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    with open(src, "wb") as f:
        f.write(data)
    r = subprocess.run(["strip", "--strip-unneeded", "-o", dst, src], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"    WARN strip failed, kept as is: {r.stderr.strip()[:200]}")
        return data
    out = open(dst, "rb").read()
    return out if len(out) < len(data) else data

def repack(dl, out, strip, drop, dedup):
    strip = {norm(n) for n in strip.split()}
    drops = {}
    for item in drop.split():
        w, prefix = item.split(":", 1)
        drops.setdefault(norm(w), []).append(prefix)
    dedup = [norm(n) for n in dedup.split()]
    files = sorted(f for f in os.listdir(dl) if f.endswith(".whl"))
    by_name = {wheel_parts(f)[0]: f for f in files}
    shipped = {}   # path -> sha256 of the bytes shipped by an earlier wheel of the dedup group
    order = [n for n in dedup if n in by_name] + [n for n in sorted(by_name) if n not in dedup]
    tmp = tempfile.mkdtemp(dir=out)
    try:
        for name in order:
            fname = by_name[name]
            src, dst = os.path.join(dl, fname), os.path.join(out, fname)
            _, _, tags = wheel_parts(fname)
            with zipfile.ZipFile(src) as zi:
                infos = [i for i in zi.infolist() if not i.is_dir()]
                distinfo = [i.filename.split("/")[0] for i in infos
                            if i.filename.count("/") == 1 and i.filename.endswith(".dist-info/WHEEL")]
                assert len(distinfo) == 1, f"{fname}: {len(distinfo)} top-level .dist-info/WHEEL"
                distinfo = distinfo[0]
                record = distinfo + "/RECORD"
                prefixes = tuple(drops.get(name, ()))
                notes, entries, changed = [], [], False
                n_drop = n_dup = n_strip = 0
                for i in infos:
                    if i.filename == record:
                        continue
                    if prefixes and i.filename.startswith(prefixes):
                        n_drop += 1
                        changed = True
                        continue
                    data = zi.read(i)
                    if name in dedup:
                        h = hashlib.sha256(data).hexdigest()
                        if shipped.get(i.filename) == h:
                            n_dup += 1
                            changed = True
                            continue
                        if i.filename in shipped:
                            print(f"    WARN {fname}: {i.filename} differs from an earlier wheel's; kept in both")
                        shipped.setdefault(i.filename, h)
                    if name in strip and data[:4] == b"\x7fELF":
                        new = strip_elf(data, tmp)
                        if new is not data:
                            n_strip += 1
                            changed = True
                            data = new
                    if i.filename == distinfo + "/WHEEL":
                        lines = data.decode().splitlines()
                        if sorted(l[5:].strip() for l in lines if l.startswith("Tag:")) != sorted(tags):
                            at = next((k for k, l in enumerate(lines) if l.startswith("Tag:")), len(lines))
                            lines = [l for l in lines if not l.startswith("Tag:")]
                            lines[at:at] = [f"Tag: {t}" for t in tags]
                            data = ("\n".join(lines) + "\n").encode()
                            notes.append("WHEEL tags set to the file name's")
                            changed = True
                    entries.append((i, data))
                if not changed:
                    shutil.copy2(src, dst)
                    continue
                # dist-info last, RECORD at the very end (PEP 427)
                entries.sort(key=lambda e: e[0].filename.startswith(distinfo + "/"))
                rows = [(i.filename, b64hash(d), str(len(d))) for i, d in entries] + [(record, "", "")]
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerows(rows)
                rec_info = next((i for i in zi.infolist() if i.filename == record), None)
                with zipfile.ZipFile(dst + ".part", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
                    for i, d in entries + [(rec_info, buf.getvalue().encode())]:
                        ni = zipfile.ZipInfo(i.filename if i is not rec_info else record,
                                             date_time=i.date_time if i else (1980, 1, 1, 0, 0, 0))
                        ni.external_attr = i.external_attr if i and i.external_attr else 0o644 << 16
                        zo.writestr(ni, d, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
                os.replace(dst + ".part", dst)
            done = [f"{n_drop} files left out" if n_drop else "", f"{n_dup} duplicates left to an earlier wheel"
                    if n_dup else "", f"{n_strip} ELF files stripped" if n_strip else ""] + notes
            print(f"  repacked {fname}: {os.path.getsize(src) / 1e6:.1f} -> {os.path.getsize(dst) / 1e6:.1f} MB "
                  f"({', '.join(x for x in done if x)})")
    finally:
        shutil.rmtree(tmp)

def verify(out, required):
    """Every wheel: CRCs good, and RECORD lists exactly its files with their sha256 and size."""
    bad = []
    files = sorted(f for f in os.listdir(out) if f.endswith(".whl"))
    for fname in files:
        with zipfile.ZipFile(os.path.join(out, fname)) as z:
            if z.testzip() is not None:
                bad.append(f"{fname}: bad CRC")
                continue
            names = [n for n in z.namelist() if not n.endswith("/")]
            rec = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
            if len(rec) != 1:
                bad.append(f"{fname}: {len(rec)} RECORD files")
                continue
            rows = {r[0]: r for r in csv.reader(io.StringIO(z.read(rec[0]).decode())) if r}
            for n in names:
                if n == rec[0]:
                    continue
                r = rows.get(n)
                d = z.read(n)
                alg = r[1].split("=", 1)[0] if r and "=" in r[1] else "sha256"
                if r is None or r[1] != b64hash(d, alg) or r[2] != str(len(d)):
                    bad.append(f"{fname}: {n} not in RECORD or hash/size wrong")
                    break
            missing = set(rows) - set(names)
            if missing:
                bad.append(f"{fname}: RECORD lists {len(missing)} files it lacks, e.g. {sorted(missing)[0]}")
    have = {wheel_parts(f)[0] for f in files}
    bad += [f"no wheel for {r}" for r in required.split() if norm(r) not in have]
    for b in bad:
        print("  FAIL " + b)
    print(f"  checked {len(files)} wheels (zip CRCs, RECORD hashes and sizes): {'ok' if not bad else 'FAILED'}")
    sys.exit(1 if bad else 0)

def summary(out, limit_mb):
    files = sorted(f for f in os.listdir(out) if f.endswith(".whl"))
    total = 0
    for f in sorted(files, key=lambda f: -os.path.getsize(os.path.join(out, f))):
        size = os.path.getsize(os.path.join(out, f))
        total += size
        print(f"  {size / 1e6:9.3f} MB  {f}")
    over = total > float(limit_mb) * 1e6
    print(f"  total: {len(files)} wheels, {total / 1e6:.2f} MB ({total / 2**20:.2f} MiB, {total} bytes); "
          f"limit {limit_mb} MB: {'OVER' if over else 'ok'}")
    sys.exit(1 if over else 0)

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"select": select, "check-download": check_download, "repack": repack, "verify": verify,
     "summary": summary}[cmd](*args)
PYEOF
gw() { "$PY" "$WORK/gw.py" "$@"; }

# --- 1. resolve -----------------------------------------------------------------------------------------
log "1/5 resolving the dependency closure (pip install --dry-run --report)"
"$PY" -m pip install --dry-run --ignore-installed "${PIPFLAGS[@]}" --target "$WORK/target" \
    --report "$WORK/report.json" "${REQS[@]}" >"$WORK/resolve.log" 2>&1 \
  || { tail -20 "$WORK/resolve.log"; die "pip could not resolve ${REQS[*]} (network? versions?)"; }

# --- 2. leave out what the GPU machine has ---------------------------------------------------------------
log "2/5 leaving out the GPU machine's own packages"
gw select "$WORK/report.json" "$TARGET_HAS" "$NEVER" "$WORK/carry.txt" "$WORK/expected.json"

# --- 3. download ----------------------------------------------------------------------------------------
log "3/5 downloading $(wc -l <"$WORK/carry.txt") wheels (pip download --no-deps)"
"$PY" -m pip download --no-deps "${PIPFLAGS[@]}" -d "$WORK/dl" -r "$WORK/carry.txt" >"$WORK/download.log" 2>&1 \
  || { tail -20 "$WORK/download.log"; die "pip download failed"; }
gw check-download "$WORK/dl" "$WORK/expected.json" || die "the downloaded wheels are not the resolved ones" 1

# --- 4. repack ------------------------------------------------------------------------------------------
log "4/5 repacking (left-out folders, strip, duplicates, RECORD, deflate 9)"
mkdir -p "$WORK/out"
gw repack "$WORK/dl" "$WORK/out" "$STRIP" "$DROP" "$DEDUP"
gw verify "$WORK/out" "ray mlflow optuna lpips" || { KEEP_WORK=1; die "a wheel failed its check; $OUTDIR left as it was" 1; }

# --- 5. sizes, limit, OUTDIR ----------------------------------------------------------------------------
log "5/5 sizes"
if ! gw summary "$WORK/out" "$LIMIT_MB"; then
  KEEP_WORK=1
  die "the wheels are over ${LIMIT_MB} MB; $OUTDIR left as it was (new wheels: $WORK/out)" 1
fi
mkdir -p "$OUTDIR"
old=$(find "$OUTDIR" -maxdepth 1 -name '*.whl' | wc -l)
find "$OUTDIR" -maxdepth 1 -name '*.whl' -delete
mv "$WORK"/out/*.whl "$OUTDIR"/
# what the run tool copies besides: the working tree (tracked and untracked, not ignored); 64 MiB in all
tree=$(git ls-files -z -co --exclude-standard 2>/dev/null | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}') || tree=0
wheels=$(du -cb "$OUTDIR"/*.whl | tail -1 | cut -f1)
log "done: $OUTDIR holds $(ls "$OUTDIR"/*.whl | wc -l) wheels (replaced $old)"
log "the working tree ($(awk -v t="$tree" 'BEGIN {printf "%.1f", t / 2^20}') MiB) and these wheels:" \
    "$(awk -v t="$tree" -v w="$wheels" 'BEGIN {printf "%.1f", (t + w) / 2^20}') MiB of the run tool's 64" \
    "(carry takes a path inside the repository: .whl for bench/gpu_check.sh)"
