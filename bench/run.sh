#!/usr/bin/env bash
# Runs the benchmarks in one go. torchviz, torchview and TorchLens (with the packages TorchLens
# needs) go into bench/.deps (not into .venv): peers we measure against, not dependencies of
# gradscope.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -d bench/.deps/torchviz ] || [ ! -d bench/.deps/torchview ] || [ ! -d bench/.deps/torchlens ]; then
    "$PY" -m pip install -q --no-deps --target bench/.deps torchviz torchview torchlens numpy \
        safetensors tqdm pillow packaging
fi
export PYTHONPATH="$PWD/bench/.deps${PYTHONPATH:+:$PYTHONPATH}"
"$PY" bench/bench_capture.py --out bench/RESULTS-capture.md "$@"
"$PY" bench/bench_walk.py --reps 3 --out bench/RESULTS-walk.md
"$PY" bench/bench_watch.py --out bench/RESULTS-watch.md
"$PY" bench/bench_render.py --out bench/RESULTS-render.md
"$PY" -m torch.distributed.run --standalone --nproc-per-node 2 bench/bench_ddp.py --steps 60 --out bench/RESULTS-ddp.md
