#!/usr/bin/env bash
# Issue 7's GPU run, in one go, on a machine with an NVIDIA GPU: the CUDA tests, then capture
# cost (gradscope vs plain vs torchviz vs TorchLens) and watch overhead at the issue's sizes.
# Writes bench/RESULTS-gpu-*.md; copy the figures into bench/RESULTS.md with this command line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -m pytest -q -m cuda tests 2>&1 | tee bench/RESULTS-gpu-tests.txt
if [ ! -d bench/.deps/torchviz ] || [ ! -d bench/.deps/torchlens ]; then
    "$PY" -m pip install -q --no-deps --target bench/.deps torchviz torchview torchlens numpy \
        safetensors tqdm pillow packaging
fi
export PYTHONPATH="$PWD/bench/.deps${PYTHONPATH:+:$PYTHONPATH}"
"$PY" bench/bench_capture.py --device cuda --out bench/RESULTS-gpu-capture.md
"$PY" bench/bench_watch.py --device cuda --steps 40 --out bench/RESULTS-gpu-watch.md
