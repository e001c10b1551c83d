# `make demo` and `make test` each build .venv from scratch when it is missing or stale
# (older than pyproject.toml), then run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nbfanout demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra
	$(VENV)/bin/python -m pytest -q -ra --nbmake notebooks/

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
