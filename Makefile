# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.relaxplug-installed

# torch/torchvision: the machine's local CUDA builds (see README, "Installation").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow bench bench-soundness clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e '.[test,lirpa]'
	# auto_LiRPA 0.3's metadata pins torch<1.13: install it without its pins (relaxplug/_compat.py)
	$(PIP) install --quiet --no-deps auto-lirpa==0.3
	# robustbench 1.1.1 imports autoattack (shipped as pyautoattack: relaxplug/_compat.py maps it),
	# pkg_resources (setuptools<81), timm, gdown, geotorch and torchdiffeq (its zoo's modules)
	$(PIP) install --quiet 'setuptools<81' pyautoattack requests pandas timm==1.0.9 gdown==5.1.0 geotorch torchdiffeq
	$(PIP) install --quiet --no-deps robustbench==1.1.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/relaxplug demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	RELAXPLUG_RUN_SLOW=1 $(PY) -m pytest -q

# speed and tightness figures (README, "Benchmarks"); each prints ratios measured side by side
bench: $(STAMP)
	$(PY) benchmarks/gloro_overhead.py
	$(PY) benchmarks/spec_cost.py
	$(PY) benchmarks/lipschitz_bounds.py

# the full soundness sweep (the test suite runs its fast mode)
bench-soundness: $(STAMP)
	$(PY) benchmarks/soundness_sweep.py

clean:
	rm -rf $(VENV) out build *.egg-info
