# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.relaxplug-installed

# torch/torchvision: the machine's local CUDA builds (see README, "Installation").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# auto_LiRPA release: 0.3 (the package index's, default) or 0.7 (the maintained source release,
# installed from LIRPA_SRC into its own venv, LIRPA07_VENV; docs/lirpa.md). `make test LIRPA=0.7`
# runs the bound-propagation tests (marker `lirpa`) on 0.7.1.
LIRPA ?= 0.3
LIRPA_SRC ?= $(firstword $(wildcard ../shared/vendor/auto_LiRPA-0.7.1-src.tar.gz))
LIRPA07_VENV ?= .venv-lirpa07
LIRPA07_PY := $(LIRPA07_VENV)/bin/python
LIRPA07_STAMP := $(LIRPA07_VENV)/.relaxplug-installed

.PHONY: install install-lirpa07 demo test test-lirpa07 test-slow bench bench-lirpa bench-soundness clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet $(TORCH_SPEC)
	# the lightning extra: examples/lightning_training.py, which the tests run
	$(PIP) install --quiet -e '.[test,lirpa,lightning]'
	# auto_LiRPA 0.3's metadata pins torch<1.13: install it without its pins (relaxplug/_compat.py)
	$(PIP) install --quiet --no-deps auto-lirpa==0.3
	# robustbench 1.1.1 imports autoattack (shipped as pyautoattack: relaxplug/_compat.py maps it),
	# pkg_resources (setuptools<81), timm, gdown, geotorch and torchdiffeq (its zoo's modules)
	$(PIP) install --quiet 'setuptools<81' pyautoattack requests pandas timm==1.0.9 gdown==5.1.0 geotorch torchdiffeq
	$(PIP) install --quiet --no-deps robustbench==1.1.1
	touch $(STAMP)

# the same set-up, with auto_LiRPA 0.7.1 from source instead of 0.3 (its setup.py pins torch<2.9
# and test-only packages: installed without its dependency list, plus its runtime imports)
$(LIRPA07_STAMP): pyproject.toml
	@test -n "$(LIRPA_SRC)" || { echo "LIRPA=0.7 needs LIRPA_SRC=<auto_LiRPA 0.7.1 source (tar.gz or folder)>"; exit 2; }
	$(PYTHON) -m venv $(LIRPA07_VENV)
	$(LIRPA07_PY) -m pip install --quiet --upgrade pip
	$(LIRPA07_PY) -m pip install --quiet $(TORCH_SPEC)
	$(LIRPA07_PY) -m pip install --quiet -e '.[test,lirpa]'
	$(LIRPA07_PY) -m pip install --quiet --no-deps $(LIRPA_SRC)
	$(LIRPA07_PY) -m pip install --quiet appdirs packaging graphviz ninja tqdm pyyaml
	touch $(LIRPA07_STAMP)

install-lirpa07: $(LIRPA07_STAMP)

ifeq ($(LIRPA),0.3)
install: $(STAMP)
else ifeq ($(LIRPA),0.7)
install: $(LIRPA07_STAMP)
else
install:
	@echo "LIRPA must be 0.3 or 0.7, got $(LIRPA)"; exit 2
endif

demo: $(STAMP)
	$(VENV)/bin/relaxplug demo --out out/demo

ifeq ($(LIRPA),0.7)
test: test-lirpa07
else
test: $(STAMP)
	$(PY) -m pytest -q
endif

# the bound-propagation tests on auto_LiRPA 0.7.1
test-lirpa07: $(LIRPA07_STAMP)
	$(LIRPA07_PY) -m pytest -q -m lirpa

test-slow: $(STAMP)
	RELAXPLUG_RUN_SLOW=1 $(PY) -m pytest -q

# speed and tightness figures (README, "Benchmarks"); each prints ratios measured side by side
bench: $(STAMP)
	$(PY) benchmarks/gloro_overhead.py
	$(PY) benchmarks/spec_cost.py
	$(PY) benchmarks/lipschitz_bounds.py

# ibp, crown-ibp, crown, alpha-crown on auto_LiRPA 0.3 and 0.7.1, side by side (docs/lirpa.md)
bench-lirpa: $(STAMP) $(LIRPA07_STAMP)
	$(PY) benchmarks/lirpa_versions.py --python-07 $(LIRPA07_PY)

# the full soundness sweep (the test suite runs its fast mode)
bench-soundness: $(STAMP)
	$(PY) benchmarks/soundness_sweep.py

clean:
	rm -rf $(VENV) $(LIRPA07_VENV) out build *.egg-info
