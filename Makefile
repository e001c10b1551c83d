# `make demo`, `make test` and `make bench` each build .venv from scratch when it is missing
# or stale (older than pyproject.toml), then run. `make bench` rewrites benchmarks/RESULTS.md
# (18 minutes on 2 CPUs for 3 repetitions, measured, then 1.5 for the shared-key run; BENCH_ARGS="--reps 1" about 7); BENCH_ARGS passes options to benchmarks/bench.py (see its --help).
# `make soak` (about 2.5 minutes) runs 20,000 requests through one Fanout and writes its section into RESULTS.md.
# `make redis` starts a local Redis for shared budgets and prints its URL.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench soak redis venv clean

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

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench.py $(BENCH_ARGS)
	$(VENV)/bin/python benchmarks/shared_key.py

soak: $(STAMP)
	$(VENV)/bin/python benchmarks/soak.py

# A local Redis for shared budgets (Debian: apt-get install redis-server), no persistence, in the
# foreground until Ctrl-C; prints its URL. REDIS_PORT picks the port (default 6379).
redis: $(STAMP)
	$(VENV)/bin/python -m nbfanout.sandbox.redis_server $(REDIS_PORT)

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
