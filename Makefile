# `make run` and `make test` create .venv on first use (pinned versions from requirements.lock),
# then do their job. Everything else is a helper for those two.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= conf/local.yaml
PYTEST_ARGS ?=

export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP ?= 127.0.0.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test install data bench clean wheel

$(STAMP): requirements.lock setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" wheel "setuptools>=70"
	# --no-deps: the lock is the complete environment; nothing is resolved here (see its header).
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check | grep -v -i "petastorm" || true
	# Spark's own Delta Lake: its jars resolved once through Maven Central into Ivy's cache
	# (~/.ivy2.5.2); sessions then load them from disk and never resolve at start.
	$(PY) -m capmix.jars fetch
	touch $(STAMP)

install: $(STAMP)

# System data from Debian: Fashion-MNIST (70,000 labelled photos, the embedded default's images) and
# Lingua::EN::Tagger's lexicon (the offline part-of-speech tagger behind the unique-noun counts).
DEB_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz /usr/share/perl5/Lingua/EN/Tagger/words.yml
DEB_PKGS := dataset-fashion-mnist liblingua-en-tagger-perl

data:
	@missing=0; for f in $(DEB_DATA); do [ -f $$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		if command -v apt-get >/dev/null; then \
			(apt-get install -y -q $(DEB_PKGS) >/dev/null 2>&1 || \
			 (apt-get update -q >/dev/null && apt-get install -y -q $(DEB_PKGS) >/dev/null)) || \
			echo "could not install $(DEB_PKGS); see README (data)"; \
		else echo "no apt-get: install $(DEB_PKGS) or point the config at copies (README, data)"; fi; \
	fi

run: $(STAMP) data
	$(VENV)/bin/capmix run --config $(CONFIG)

test: $(STAMP) data
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# The wheel a cluster installs (Databricks: `%pip install dist/capmix-*.whl`, or the bundle's
# libraries). Built offline from this tree with the venv's setuptools; requirements are ranges
# (setup.py), never the lock's pins.
wheel: $(STAMP)
	rm -rf build dist/capmix-*.whl
	$(PY) -m pip wheel -q --no-deps --no-build-isolation --wheel-dir dist .
	@ls dist/capmix-*.whl

bench: $(STAMP) data
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) lake report runs
