# `make demo` and `make test` do the whole set-up on a fresh machine (scripts/setup.sh):
# .venv in the repo root, torch (an installed one is kept, else torch==2.13.0), gradscope and its
# dependencies, and Graphviz's `dot` via apt-get when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/gradscope trace samples/layers_in_forward.py --out gradscope-report --fail-on never
	@echo
	@echo "Report written to gradscope-report/: report.html (open it in a browser: findings, graph, tables), graph.svg, trace.json, graph.dot"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	bash bench/run.sh

clean:
	rm -rf gradscope-report .pytest_cache tests/artifacts
