#!/usr/bin/env bash
# Runs the benchmarks in one go. torchviz goes into bench/.deps (not into .venv): it is a peer
# we measure against, not a dependency of gradscope.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -d bench/.deps/torchviz ]; then
    "$PY" -m pip install -q --no-deps --target bench/.deps torchviz
fi
export PYTHONPATH="$PWD/bench/.deps${PYTHONPATH:+:$PYTHONPATH}"
"$PY" bench/bench_capture.py --out bench/RESULTS-capture.md "$@"
"$PY" bench/bench_watch.py --out bench/RESULTS-watch.md
