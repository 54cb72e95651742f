# ejaot: `make artifacts` builds the store, `make test` runs the suite. Both create or
# reuse the virtual environment in .venv from pinned versions.
TARGET   ?= cpu
MANIFEST ?= manifests/default.toml
OUT      ?=
JOBS     ?=

VENV     := .venv
PYTHON   := $(VENV)/bin/python
EXTRAS   := $(VENV)/ejaot-extras
PIP      := $(PYTHON) -m pip install -q --disable-pip-version-check

# A working python3.12 first, then pyenv's 3.12 (its shim fails unless selected).
PY312 := $(shell for c in python3.12 "$$(pyenv root 2>/dev/null)/versions/3.12.*/bin/python3.12"; do \
	  for p in $$c; do "$$p" -c 'import sys; assert sys.version_info[:2]==(3,12)' >/dev/null 2>&1 && { echo "$$p"; exit 0; }; done; done)

.PHONY: artifacts test bench demo fuzz venv clean help

help:
	@echo "make artifacts [TARGET=cpu] [MANIFEST=manifests/default.toml] [JOBS=N]"
	@echo "make test | make demo [DEMO_ARGS=...] | make bench | make fuzz | make clean"

venv: $(VENV)/.base-installed

$(VENV)/.base-installed: requirements/base.txt pyproject.toml
	@if [ -z "$(PY312)" ]; then echo "error: ejaot needs Python 3.12 (jax 0.11 requires it); none found as python3.12 or under pyenv" >&2; exit 1; fi
	@test -x $(PYTHON) || $(PY312) -m venv $(VENV)
	$(PIP) -r requirements/base.txt
	$(PIP) --no-deps --no-build-isolation -e .
	@touch $@

# Lowering for GPU targets: triton + jax-triton in the venv, the CUDA plugin beside it.
$(VENV)/.gpu-installed: $(VENV)/.base-installed requirements/gpu-build.txt requirements/cuda-extras.txt
	$(PIP) -r requirements/gpu-build.txt
	$(PIP) --no-deps --target $(EXTRAS)/cuda -r requirements/cuda-extras.txt
	@touch $@

# Ray as the build executor (`ejaot build --executor ray`): an optional extra.
$(VENV)/.ray-installed: $(VENV)/.base-installed requirements/ray.txt
	$(PIP) -r requirements/ray.txt
	@touch $@

# `make bench`'s plot (benchmarks/plot.py): matplotlib, for the bench target only.
$(VENV)/.bench-installed: $(VENV)/.base-installed requirements/bench.txt
	$(PIP) -r requirements/bench.txt
	@touch $@

# Cross-compiling for TPU targets: libtpu beside the venv.
$(VENV)/.tpu-installed: $(VENV)/.base-installed requirements/tpu-extras.txt
	$(PIP) --no-deps --target $(EXTRAS)/tpu -r requirements/tpu-extras.txt
	@touch $@

TARGET_DEPS = $(VENV)/.base-installed
ifneq ($(filter gpu-%,$(TARGET)),)
TARGET_DEPS += $(VENV)/.gpu-installed
endif
ifneq ($(filter tpu-%,$(TARGET)),)
TARGET_DEPS += $(VENV)/.tpu-installed
endif

artifacts: $(TARGET_DEPS)
	$(VENV)/bin/ejaot build --manifest $(MANIFEST) --target $(TARGET) $(if $(OUT),--out $(OUT)) $(if $(JOBS),--jobs $(JOBS))

test: $(VENV)/.base-installed $(VENV)/.gpu-installed $(VENV)/.tpu-installed $(VENV)/.ray-installed
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The long hardening runs: 1000 store mutations, 1000 record mutations, a minute of 32 threads under load.
fuzz: $(VENV)/.base-installed
	EJAOT_FUZZ_MUTATIONS=1000 EJAOT_LOAD_SECONDS=60 $(PYTHON) -m pytest -q -s \
	  tests/engine/test_fuzz_store.py tests/engine/test_record_schema.py tests/engine/test_hardening.py::test_many_threads_through_one_bundle $(PYTEST_ARGS)

# Measures -> bench-results/; the start-up figures also -> benchmarks/results/*.json, and
# benchmarks/plot.py draws those with the recorded GPU results -> benchmarks/results/summary.png.
bench: $(VENV)/.base-installed $(VENV)/.tpu-installed $(VENV)/.bench-installed
	$(PYTHON) -m benchmarks.startup --manifest $(MANIFEST) --out bench-results
	$(PYTHON) -m benchmarks.plot record startup bench-results/startup.json \
	  --command "make bench (python -m benchmarks.startup --manifest $(MANIFEST))"
	$(PYTHON) -m benchmarks.tpu_compile --manifest $(MANIFEST) --out bench-results
	JAX_PLATFORMS=cpu $(PYTHON) examples/demo.py > bench-results/demo.out
	$(PYTHON) -m benchmarks.plot record demo bench-results/demo.out \
	  --command "make bench (python examples/demo.py)"
	$(PYTHON) -m benchmarks.plot

# A decoder served from a store, start-up measured in fresh processes (examples/demo.py);
# its last line is one JSON object.
demo: $(VENV)/.base-installed
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(PYTHON) examples/demo.py $(DEMO_ARGS)

clean:
	rm -rf artifacts bench-results
