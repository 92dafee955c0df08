# Set-up happens on first use: `make run` and `make test` each create .venv if needed.
# torch is pinned to one release (which build pip picks: README, set-up); the library itself
# accepts any torch >= 2.5.
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: run test bench clean

$(VENV)/.ready: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH)
	touch $@

run: $(VENV)/.ready
	$(VENV)/bin/fxroof analyze

test: $(VENV)/.ready
	$(VENV)/bin/lint-imports --no-cache   # the stages' layering (pyproject.toml), then the tests
	$(PY) -m pytest

bench: $(VENV)/.ready
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
