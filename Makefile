# make demo: set up .venv, build, run the bundled demo.  make test: set up, run every test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.deps-stamp
BUILT  := $(VENV)/.build-stamp
SOURCES := $(shell find csrc kernels snnsparse -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null) setup.py pyproject.toml

.PHONY: demo test install bench clean nvcc-check

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

$(STAMP): $(PY) requirements-dev.txt requirements-nodeps.txt constraints.txt tools/install_torch.sh
	bash tools/install_torch.sh $(VENV)
	$(PIP) install -q -c constraints.txt -r requirements-dev.txt
	# SpikingJelly, snnTorch, Norse, nirtorch are test-only; --no-deps keeps them from pulling torchvision/CUDA torch.
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

$(BUILT): $(STAMP) $(SOURCES)
	MAX_JOBS=2 $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $(BUILT)

install: $(BUILT)

demo: install
	$(PY) -m snnsparse.cli demo

test: install nvcc-check
	$(PY) -m pytest -q tests

# Compile every CUDA source with nvcc against torch's headers, even where no GPU exists.
nvcc-check: $(STAMP)
	$(PY) tools/nvcc_check.py

bench: install
	$(PY) -m snnsparse.cli bench

clean:
	rm -rf build *.egg-info snnsparse/_C*.so
