#!/usr/bin/env bash
# Issue 7's GPU run, in one go, on a machine with an NVIDIA GPU: the CUDA tests (including DDP
# over NCCL, issue 8), then capture cost (gradscope vs plain vs torchviz vs TorchLens) and watch
# overhead at the issue's sizes. Writes bench/RESULTS-gpu-*.md; copy the figures into
# bench/RESULTS.md with this command line.
#
#   bash bench/run_gpu.sh                      # after `make test` made .venv (needs the internet)
#   PY=python3 WHEELS=.whl bash bench/run_gpu.sh
#       # offline: a Python that already has a CUDA torch, click, networkx and pytest; the
#       # peers (graphviz, torchviz, torchview, torchlens: pure Python) as wheels in $WHEELS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SITE=${TMPDIR:-/tmp}/gradscope-gpu-site
if ! "$PY" -c "import gradscope, gradscope_cli" 2>/dev/null; then
    # Installs this checkout only; every dependency must already be there.
    "$PY" -m pip install -q --no-deps --no-index --no-build-isolation --target "$SITE" .
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'; \
print('GPU:', torch.cuda.get_device_name(0), '| devices:', torch.cuda.device_count(), \
'| torch', torch.__version__)" | tee bench/RESULTS-gpu-tests.txt
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee -a bench/RESULTS-gpu-tests.txt
DEPS=bench/.deps-gpu
if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-deps --no-index --target "$DEPS" "$WHEELS"/*.whl
elif [ ! -d "$DEPS/torchviz" ] || [ ! -d "$DEPS/torchlens" ]; then
    "$PY" -m pip install -q --no-deps --target "$DEPS" graphviz torchviz torchview torchlens \
        numpy safetensors tqdm pillow packaging
fi
export PYTHONPATH="$PWD/$DEPS${PYTHONPATH:+:$PYTHONPATH}"
"$PY" bench/bench_capture.py --device cuda --out bench/RESULTS-gpu-capture.md
"$PY" bench/bench_watch.py --device cuda --steps 40 --out bench/RESULTS-gpu-watch.md
