#!/usr/bin/env bash
# The prepared GPU check: one command, at most 8 minutes on one H100/H200-class GPU.
#
#   scripts/gpu_check.sh OUT_DIR      # on a machine with a CUDA GPU: writes OUT_DIR/gpu_check.json
#   scripts/gpu_check.sh --dry-run    # anywhere: checks nothing, runs nothing, lists what it would run
#
# Steps, in this order, each under its own time limit and all under one deadline (BUDGET_S, 480 s):
#   1. prerequisites: python3 with torch and a CUDA device; hydra-core, omegaconf, thop (the lent GPU
#      machine lacks them: ../shared/device/stage-wheels.sh copies their wheels into .whl/, carry .whl
#      and this script installs them from there into a temporary folder); pytest, torchvision, timm.
#   2. every CUDA-only test: the tests that a GPU-less machine skips (benchmarks/cuda_only.py selects
#      them by their skipif reason/marker among the test files that mention CUDA or a GPU).
#   3. the GPU-only checks of benchmarks/gpu_checks.py (Triton SimAM in fp32/fp16/bf16/channels_last,
#      CUDA RNG save/restore, host syncs per step under set_sync_debug_mode, the nvJPEG race repro,
#      bit-exact resume with trainer.deterministic=true).
#   4. the GPU rows of scripts/benchmark.py, one process per section so that a slow section cannot
#      take the others' results with it: simam (vs the memory-bound floor, CUDA events), simam_model
#      (SimAM-ResNet vs ResNet step time and peak memory, bf16 + channels_last), cifar_epoch
#      (data.on_device vs the original-style loop), gpu_decode (nvJPEG vs CPU), resnet50_compile.
# Whatever was skipped (missing prerequisite, deadline reached) is printed and recorded in the JSON.
# Exit code: 0 all ran and passed, 1 something failed or was skipped, 2 wrong usage or no GPU.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
BENCH_SECTIONS="simam simam_model cifar_epoch gpu_decode resnet50_compile"  # the longest (compiling ResNet-50) last
TESTS_LIMIT_S=90
CHECKS_LIMIT_S=180
START=$(date +%s)

usage() { echo "usage: scripts/gpu_check.sh OUT_DIR | --dry-run" >&2; exit 2; }
[ $# -eq 1 ] || usage
DRY=0
case "$1" in
  --dry-run) DRY=1 ;;
  -*) usage ;;
  *) OUT=$1 ;;
esac

# the test files that can hold CUDA-only tests (benchmarks/cuda_only.py then keeps only those tests)
cuda_test_files() { grep -l -E "cuda\.is_available|mark\.(cuda|gpu)|(CUDA|GPU) (device|only)" tests/test_*.py 2>/dev/null | tr '\n' ' '; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
limit() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }

if [ "$DRY" = 1 ]; then
  echo "gpu_check dry run: nothing is run; on a GPU machine, within ${BUDGET_S} s:"
  echo "1. prerequisites: $PY with torch and a CUDA device; python modules hydra, omegaconf, thop, pytest, torchvision, timm"
  echo "   (missing ones installed from .whl/*.whl when present: ../shared/device/stage-wheels.sh stages them)"
  echo "2. CUDA-only tests (<= ${TESTS_LIMIT_S} s): PYTHONPATH=. $PY -m pytest -q -rs -p benchmarks.cuda_only $(cuda_test_files)"
  PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} timeout 240 "$PY" -m pytest -q --collect-only -p benchmarks.cuda_only \
    $(cuda_test_files) 2>/dev/null | grep '::' | sed 's/^/   test: /'
  echo "3. GPU checks (<= ${CHECKS_LIMIT_S} s): $PY benchmarks/gpu_checks.py --json STEP_DIR/checks.json"
  "$PY" benchmarks/gpu_checks.py --list | sed 's/^/   check: /'
  for s in $BENCH_SECTIONS; do
    echo "4. benchmark: $PY scripts/benchmark.py --device cuda --only $s --repeats 5 --warmup 2 --json STEP_DIR/bench_$s.json"
  done
  echo "5. merge: OUT_DIR/gpu_check.json (prerequisites, test summary, checks, benchmark rows, skipped steps, log tails)"
  exit 0
fi

mkdir -p "$OUT" || exit 2
STEP_DIR=$(mktemp -d)
SKIPPED="$STEP_DIR/skipped.txt"
: > "$SKIPPED"
skip() { echo "gpu_check: SKIPPED $1" >&2; echo "$1" >> "$SKIPPED"; }

# ---- 1. prerequisites
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: error: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing run" >&2
  exit 2
fi
missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("hydra", "omegaconf", "thop", "antlr4") if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  wheels=""
  for d in "$ROOT/.whl" "$ROOT/../shared/device"; do
    ls "$d"/*.whl >/dev/null 2>&1 && { wheels=$d; break; }
  done
  if [ -n "$wheels" ]; then
    SITE="$STEP_DIR/site"
    echo "gpu_check: installing $missing from $wheels" >&2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$wheels"/*.whl >&2 \
      && export PYTHONPATH="$SITE"
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - > "$STEP_DIR/prereq.json" <<'EOF'
import importlib.util, json, shutil, torch
mods = {m: importlib.util.find_spec(m) is not None for m in ("hydra", "omegaconf", "thop", "pytest", "torchvision", "timm", "triton")}
print(json.dumps({"modules": mods, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0), "nvidia_smi": shutil.which("nvidia-smi") is not None}))
EOF
cat "$STEP_DIR/prereq.json" >&2
has() { "$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('$1') else 1)"; }
CLI_OK=1
for m in hydra omegaconf; do has $m || { CLI_OK=0; skip "prerequisite: python module $m missing (stage the wheels: ../shared/device/stage-wheels.sh)"; }; done
has thop || skip "prerequisite: thop missing (parameter/MAC profiling in the CLI runs)"

# ---- 2. CUDA-only tests
if has pytest; then
  t=$(limit $TESTS_LIMIT_S)
  timeout "$t" "$PY" -m pytest -q -rs -p benchmarks.cuda_only --junitxml "$STEP_DIR/tests.xml" $(cuda_test_files) \
    > "$STEP_DIR/tests.log" 2>&1
  echo "tests exit $?" >> "$STEP_DIR/tests.log"
  tail -5 "$STEP_DIR/tests.log" >&2
else
  skip "CUDA-only tests: pytest missing"
fi

# ---- 3. GPU checks
checks="triton_simam,cuda_rng,sync_per_step,nvjpeg_race"
if [ "$CLI_OK" = 1 ]; then checks="$checks,deterministic_resume"; else skip "check deterministic_resume: needs hydra/omegaconf"; fi
t=$(limit $CHECKS_LIMIT_S)
if [ "$t" -gt 10 ]; then
  timeout "$t" "$PY" benchmarks/gpu_checks.py --only "$checks" --json "$STEP_DIR/checks.json" > "$STEP_DIR/checks.log" 2>&1
  echo "checks exit $?" >> "$STEP_DIR/checks.log"
  tail -8 "$STEP_DIR/checks.log" >&2
else
  skip "GPU checks: deadline reached"
fi

# ---- 4. benchmark rows, one section per process
for s in $BENCH_SECTIONS; do
  t=$(left)
  if [ "$t" -lt 20 ]; then skip "benchmark section $s: deadline reached"; continue; fi
  timeout "$t" "$PY" scripts/benchmark.py --device cuda --only "$s" --repeats 5 --warmup 2 \
    --json "$STEP_DIR/bench_$s.json" > "$STEP_DIR/bench_$s.log" 2>&1
  rc=$?
  echo "benchmark $s exit $rc" >> "$STEP_DIR/bench_$s.log"
  [ $rc -eq 124 ] && skip "benchmark section $s: stopped at the deadline"
  grep -E '^\| ' "$STEP_DIR/bench_$s.log" | grep -v -- '---' >&2
done

# ---- 5. one JSON file
"$PY" - "$STEP_DIR" "$OUT/gpu_check.json" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
from pathlib import Path
step, out, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def load(name):
    p = step / name
    try:
        return json.loads(p.read_text()) if p.exists() else None
    except ValueError as e:
        return {"unreadable": str(e)}
def tail(name, n=4000):
    p = step / name
    return p.read_text(errors="replace")[-n:] if p.exists() else None
bench = {p.stem[len("bench_"):]: load(p.name) for p in sorted(step.glob("bench_*.json"))}
result = {
    "seconds": seconds, "prerequisites": load("prereq.json"),
    "skipped": [l for l in (step / "skipped.txt").read_text().splitlines() if l],
    "tests": {"log_tail": tail("tests.log")}, "checks": load("checks.json"), "benchmark": bench,
    "logs": {p.name: tail(p.name, 2000) for p in sorted(step.glob("*.log"))},
}
checks = (result["checks"] or {}).get("checks", {})
rows = [r for b in bench.values() if b for rs in b.get("sections", {}).values() for r in rs]
tests_ok = "tests exit 0" in (result["tests"]["log_tail"] or "")
result["summary"] = {
    "tests_passed": tests_ok,
    "checks_failed": [n for n, r in checks.items() if r.get("ok") is False],
    "goals": {r["name"]: r.get("status") for r in rows if r.get("goal")},
    "errors": [f"{r['section']}: {r.get('note')}" for r in rows if r.get("status") == "ERROR"],
}
out.write_text(json.dumps(result, indent=1, default=str) + "\n")
s = result["summary"]
print(f"gpu_check: {seconds} s; tests passed: {tests_ok}; failed checks: {s['checks_failed'] or 'none'}; "
      f"skipped: {len(result['skipped'])}; wrote {out}")
ok = tests_ok and not s["checks_failed"] and not result["skipped"] and not s["errors"] and checks
sys.exit(0 if ok else 1)
EOF
rc=$?
if [ -s "$SKIPPED" ]; then echo "gpu_check: skipped:" >&2; sed 's/^/  - /' "$SKIPPED" >&2; fi
rm -rf "$STEP_DIR"
exit $rc
