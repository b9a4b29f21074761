# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV        ?= .venv
PYTHON      := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
EXTRAS      := torch,mindspore,deploy,serve,dev
PYTEST_ARGS ?=
# Two pytest-xdist workers for 2 cores (tests/conftest.py: one thread each, shared runs made once, the slow
# files first: --no-loadscope-reorder keeps that order, xdist's default sends the files with most tests first
# and so left the two default training runs for last). --durations: the slowest tests in every CI log (issue 16).
PYTEST_WORKERS ?= 2

.PHONY: setup test demo flops readme-table clean

setup: $(STAMP)

# Fast path: uv (bootstrapped into the venv with pip when it is not on PATH); pip is the fallback.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@UV=$$(command -v uv || true); \
	if [ -z "$$UV" ]; then \
	  $(PYTHON) -m pip install -q --disable-pip-version-check "$$(grep '^uv==' $(CONSTRAINTS))" && UV=$(VENV)/bin/uv; \
	fi; \
	if [ -x "$$UV" ]; then \
	  "$$UV" pip install --compile-bytecode --python $(PYTHON) -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"; \
	else \
	  $(PYTHON) -m pip install -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"; \
	fi
	@touch $(STAMP)

test: setup
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=40 tests/ parity/ $(PYTEST_ARGS)

demo: setup
	$(PYTHON) tools/demo.py

flops: setup
	$(PYTHON) tools/flops.py

readme-table: setup
	$(PYTHON) tools/flops.py --readme README.md

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
