# One environment (.venv) for everything; `make install` creates or reuses it.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml scripts/install-cpu.sh requirements/cpu.lock
	VENV=$(VENV) bash scripts/install-cpu.sh
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m runner model=pixtral_tiny engine=cpu

# The full lane: two workers, whole files to each (the tests on the session's real engine are
# all in tests/test_real_engine.py, so they share one start). The last line counts real vLLM
# engine starts.
test: install
	bash scripts/setup-browser.sh  # Debian's chromium, for the report's browser test
	$(VENV)/bin/ruff check .
	rm -f .engine-starts
	RUNNER_ENGINE_STARTS_LOG=$(CURDIR)/.engine-starts $(PY) -m pytest -q -x -n 2 --dist loadfile tests
	@echo "real vLLM engine starts: $$(cat .engine-starts 2>/dev/null | wc -l)"

# The fast lane: everything that starts no engine and is not marked slow.
test-fast: install
	bash scripts/setup-browser.sh
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -x -n 2 -m "not engine and not process and not slow" tests

bench: install
	$(PY) bench/bench.py
	$(PY) bench/pairs.py --n 1000 --max-tokens 8
	$(PY) bench/pairs.py --n 200 --max-tokens 256

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs data
