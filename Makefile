# raylane developer commands. `make run` and `make test` create or reuse .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= pipelines/configs/digits_torch.yaml
ARGS   ?=

.PHONY: run run-tf serve data-images test test-faults test-fast lint bench bench-serve bench-preprocess bench-ingest bench-tune bench-fsdp chaos cluster-up cluster-down cluster-test mlflow-ui clean venv

venv: $(VENV)/.installed

# constraints.txt pins torch to the CPU build these machines carry (and ray/mlflow to the tested
# versions); pyproject.toml itself only sets ranges, so users can pick their own torch build.
# deploy/install.sh is also the install line of the image (deploy/docker/Dockerfile).
$(VENV)/.installed: pyproject.toml constraints.txt deploy/install.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	deploy/install.sh $(BIN)/python torch,tf,dev --quiet
	touch $@

run: venv  ## the main job on the embedded defaults: local Ray, sqlite MLflow, local storage
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipelines.train_tune_serve --config $(CONFIG) $(ARGS)

run-tf: venv  ## the same pipeline on TensorFlow workers (MultiWorkerMirroredStrategy)
	$(MAKE) run CONFIG=pipelines/configs/digits_tf.yaml ARGS="$(ARGS)"

serve: venv  ## deploy the current champion without training
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipelines.serve --config $(CONFIG) $(ARGS)

data-images: venv  ## scikit-learn's digits as PNG files, a folder per class: data/digits_png/<digit>/<index>.png
	$(BIN)/python -m pipelines.digits_images --out data/digits_png $(ARGS)

test: venv  ## the whole suite (real Ray, MLflow and Serve on 127.0.0.1), then the fault tests
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q tests $(ARGS)
	$(MAKE) test-faults

# The fault tests start and kill their own clusters and servers: a pytest process of their own.
test-faults: venv  ## killed workers, lost nodes, killed jobs and replicas, MLflow down
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m faults tests/faults $(ARGS)

test-fast: venv  ## unit tests only
	$(BIN)/python -m pytest -q tests/unit $(ARGS)

lint: venv
	$(BIN)/ruff check platform pipelines serve_apps tests benchmarks examples deploy

bench: venv  ## side-by-side measurements; each prints ratio=...
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.train_tf $(ARGS)

chaos: venv  ## the demo pipeline while a Train worker and a Serve replica are killed; prints what was lost
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.chaos $(ARGS)

bench-preprocess: venv  ## raylane's data stage vs pandas: wall time and peak memory (ARGS="--rows 1000000")
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.preprocess $(ARGS)

bench-ingest: venv  ## a raylane PyTorch worker vs a plain PyTorch loop: samples/s and a fit's fixed cost
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.ingest $(ARGS)

bench-tune: venv  ## ASHA vs full-budget random search; Tune's per-trial overhead vs stock
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.tune $(ARGS)

bench-fsdp: venv  ## FSDP vs DDP, 2 workers, a 50M-parameter MLP: memory per worker and samples/s
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.fsdp $(ARGS)

bench-serve: venv  ## raylane vs `mlflow models serve` and a bare FastAPI app under wrk (needs wrk: apt-get install wrk)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.serve $(ARGS)

.PHONY: bench-predict
bench-predict: venv  ## `raylane predict` vs a single-process pyfunc loop, 5M rows: rows/s and peak memory (ARGS="--rows 1000000")
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.predict --threads-baseline $(ARGS)

.PHONY: bench-scale
bench-scale: venv  ## as root: MLflow calls per trial and the trials it takes, S3 checkpoint MB/s, object store per 1M rows (ARGS=--quick)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.scale $(ARGS)

# The multi-host rig (deploy/local-cluster/rig.py): five hosts from network and mount namespaces on
# this machine, as root. cluster-test builds it, runs tests/cluster and removes it, also on failure.
RIG := $(BIN)/python deploy/local-cluster/rig.py

cluster-up: venv  ## head, worker-1, worker-2, services (PostgreSQL, S3, MLflow server), client: 198.18.0.0/24
	$(RIG) up

cluster-down:  ## kill every process of the rig's hosts by PID; remove hosts, bridge and files (logs kept)
	$(RIG) down --keep-logs

cluster-test: venv  ## the rig's tests: across hosts, a host lost, stop/resume, two pipelines, MLflow restart
	$(RIG) down >/dev/null
	$(RIG) up
	status=0; PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -s -m cluster tests/cluster $(ARGS) \
		|| status=$$?; $(RIG) down --keep-logs; exit $$status

mlflow-ui: venv  ## the MLflow UI on the pipeline's store: http://127.0.0.1:5000
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--default-artifact-root ./mlartifacts --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf raylane_runs chaos_runs bench_data data mlflow.db mlartifacts .pytest_cache
