#!/usr/bin/env bash
# One-shot set-up used by `make demo` and `make test`: creates .venv in the repo root, installs
# torch (an already-installed one is kept), gradscope with its dependencies and the extras its
# integration tests use for real (transformers, accelerate, lightning), Graphviz's `dot`,
# g++ (torch.compile on CPU) and chromium (the HTML report's browser test).
# Safe to run again: every step checks first and does nothing when its work is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_PIN=${GRADSCOPE_TORCH:-torch==2.13.0}

say() { printf '[gradscope setup] %s\n' "$*"; }

STAMP=$VENV/.gradscope-setup
# The optional libraries of gradscope[hf,lightning], looked up without importing them (fast).
EXTRAS_PRESENT='import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("transformers", "accelerate", "lightning")))'
# Fast path: everything was set up after the last change to the package metadata.
if [ -f "$STAMP" ] && [ "$STAMP" -nt setup.cfg ] && [ "$STAMP" -nt scripts/setup.sh ] \
        && [ "$STAMP" -nt scripts/test-constraints.txt ] \
        && command -v dot >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 \
        && [ -x "$VENV/bin/gradscope" ] \
        && "$VENV/bin/python" -c "$EXTRAS_PRESENT" 2>/dev/null \
        && { [ -n "${GRADSCOPE_NO_BROWSER:-}" ] || command -v chromium >/dev/null 2>&1; }; then
    exit 0
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else say "need root for: $*  (run it yourself, then re-run make)"; return 1
    fi
}

apt_install() {
    say "installing Debian packages: $*"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "no '$PYTHON' found: install Python 3.10+ first (apt-get install python3 python3-venv)"; exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    # Keep a torch the machine already has: let the venv see the system site-packages then.
    site_flag=""
    if "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
        site_flag="--system-site-packages"
        say "keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
    fi
    if ! "$PYTHON" -m venv $site_flag "$VENV" >/dev/null 2>&1; then
        # Debian splits venv/ensurepip into python3-venv.
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv $site_flag "$VENV"
    fi
fi

VPY="$VENV/bin/python"
if ! "$VPY" -c 'import torch' >/dev/null 2>&1; then
    # A pinned version: an unpinned 'torch' would pull the multi-GB CUDA build.
    say "installing $TORCH_PIN (CPU build)"
    "$VPY" -m pip install -q "$TORCH_PIN"
fi

say "installing gradscope (editable), its dependencies and the hf/lightning extras"
# torch is installed first: the extras' own torch requirement is then already met and kept.
"$VPY" -m pip install -q -e '.[test,hf,lightning]' -c scripts/test-constraints.txt

if ! command -v dot >/dev/null 2>&1; then
    apt_install graphviz
fi
# torch.compile's default backend (inductor) builds C++ kernels on CPU; the tests compile a model.
if ! command -v g++ >/dev/null 2>&1; then
    apt_install g++
fi
# Headless Chromium for the HTML report's browser test (skip with GRADSCOPE_NO_BROWSER=1).
if [ -z "${GRADSCOPE_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium
fi
touch "$STAMP"
say "ready: $("$VPY" -c 'import torch, gradscope; print("torch", torch.__version__, "/ gradscope", gradscope.__version__)'), $(dot -V 2>&1)"
