# raypipe developer entry points. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# PyTorch's CPU build first, so that pip never resolves `torch` to a multi-GB CUDA build
# on machines without a GPU. Override with `make TORCH_SPEC=torch setup` on a GPU host.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test bench loop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-kfp.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	# grafana-client's urllib3-future: from source with URLLIB3_NO_OVERRIDE=1, or its wheel's .pth
	# replaces the installed urllib3 (which boto3, requests and Ray use) at every interpreter start
	URLLIB3_NO_OVERRIDE=1 $(PY) -m pip install -q --no-binary urllib3-future -e '.[dev]'
	# the Kubeflow Pipelines SDK next to the project's protobuf 7 (its own pins would downgrade it): see the file
	$(PY) -m pip install -q --no-deps -r requirements-kfp.txt
	touch $@

run: setup
	$(VENV)/bin/raypipe run

test: setup
	./scripts/test-deps.sh
	PYTHON=$(PYTHON) ./scripts/airflow-venv.sh
	$(PY) -m pytest -q

loop: setup
	$(PY) examples/monitoring_loop/loop.py

bench: setup
	$(PY) benchmarks/pipeline_bench.py

clean:
	rm -rf .raypipe .pytest_cache monitoring-loop-out streaming-maintenance-out
