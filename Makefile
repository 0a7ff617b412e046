# make study : set up .venv if needed, then run the quick study
# make test  : set up .venv if needed, then run the test suite
# make test-fast : the tests that start no Ray, server or command and train for about a second at most
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Data root: $VMISTUDY_DATA, else the shared datasets beside this checkout, else torchvision downloads.
ifeq ($(VMISTUDY_DATA),)
  ifneq ($(wildcard ../shared/datasets/MNIST/raw),)
    export VMISTUDY_DATA := $(abspath ../shared/datasets)
  else
    DOWNLOAD := --set data.download=true
  endif
endif

.PHONY: setup study test test-fast bench
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

study: $(STAMP)
	$(PY) -m vmistudy.run studies/quick.yaml $(DOWNLOAD) --set name=quick-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not (ray or server or subprocess or slow)"

bench: $(STAMP)
	$(PY) -m benchmarks.throughput
