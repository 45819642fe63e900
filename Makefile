# The whole set-up on a fresh machine is `make demo` or `make test`; both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The stamp's name changes when the dependency files change, so an edit reinstalls and nothing else does.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: setup system-tools demo test bench gpu-suite toy-model toy-probe toy-prompts toy-upscaler toy-locator toy-controlnet clean-venv

setup: $(STAMP)
	@:

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing loracam into $(VENV) (torch 2.13.0 first, then the rest under constraints.txt)"
	@# torch first and alone, so the later install sees it satisfied and never pulls a CUDA build.
	@$(PIP) install "torch==2.13.0" 2>&1 | { grep -v "^WARNING: Location" || true; }
	@$(PIP) install -c constraints.txt -e ".[dev,pose,tag,web,workers]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	@# mediapipe 0.10.21 carries the pose model; its metadata pins numpy<2 and opencv-contrib, so no deps.
	@# spandrel's metadata asks for torchvision, which would pull a CUDA build of torch: no deps either.
	@$(PIP) install -c constraints.txt --no-deps mediapipe==0.10.21 spandrel==0.4.2 2>&1 | { grep -v "^WARNING: Location" || true; }
	@$(MAKE) --no-print-directory system-tools
	@rm -f $(VENV)/.installed-*
	@touch $@

# Debian packages the tests drive: Chromium (the web UI's browser test, through playwright; never a downloaded
# browser) and redis-server (the workers' broker; the tests start their own on a free port). Installed with apt
# where this user may (root, or sudo without a password); elsewhere the tests that need them skip and say why.
SYSTEM_TOOLS := chromium:chromium redis-server:redis-server
system-tools:
	@for pair in $(SYSTEM_TOOLS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null && continue; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "no $$cmd and no apt-get as root here: its tests will skip (install $$pkg to run them)"; continue; fi; \
	  if ! command -v apt-get >/dev/null; then echo "no apt-get here: install $$pkg to run its tests"; continue; fi; \
	  echo "installing Debian's $$pkg for the tests (apt-get)"; \
	  { $$sudo apt-get install -y -q $$pkg >/dev/null 2>&1 || { $$sudo apt-get update -q >/dev/null 2>&1 && \
	    $$sudo apt-get install -y -q $$pkg >/dev/null 2>&1; }; } || echo "$$pkg could not be installed: its tests will skip"; \
	done

# The demo never overwrites: the previous run's folder is kept as demo-output.previous.
demo: setup
	@if [ -d demo-output ]; then rm -rf demo-output.previous && mv demo-output demo-output.previous; fi
	$(VENV)/bin/loracam demo -o demo-output

# Rebuild the shipped toy model (loracam/toy/model) and probe (loracam/toy/probe.safetensors) from nothing.
toy-model: setup
	$(PY) -m loracam.toy.build

# Two rounds: 3000 steps on one pool of renders, then 2000 more at a lower rate on a fresh pool (round one
# alone stays under the 98% bar on hair style, so its non-zero exit does not stop the second).
toy-probe: setup
	$(PY) -m loracam.toy.probe --steps 3000 --pool 20000 -o loracam/toy/probe.safetensors || true
	$(PY) -m loracam.toy.probe --init loracam/toy/probe.safetensors --steps 2000 --pool 20000 --lr 5e-4 --seed 1

# Teach a freshly built toy base's text encoder partial and shuffled prompts (loracam/toy/prompts.py): 1500
# steps from the built encoder, then 600 more at a lower rate with named shoes weighted higher (~30 + ~12 min
# on one thread). Run it once after `make toy-model`: the targets are whatever encoder is shipped when it starts.
toy-prompts: setup
	$(PY) -m loracam.toy.prompts --shoes 25 -o build/toy-prompts/stage1.safetensors
	$(PY) -m loracam.toy.prompts --init build/toy-prompts/stage1.safetensors --steps 600 --embed-steps 0 --lr 3e-4 \
		--shoes 40 --install

# The toy world's finishing models: a Real-ESRGAN compact x4 (~7 min on 2 cores) and the part locator (~15 min).
toy-upscaler: setup
	$(PY) -m loracam.toy.upscaler

toy-locator: setup
	$(PY) -m loracam.toy.locator

# The toy openpose ControlNet (loracam/toy/controlnet_openpose): ~30 min on one CPU thread (it trains on one:
# see --threads), then ~1 min of placement check; --force replaces the shipped folder (written aside, swapped in).
toy-controlnet: setup
	$(PY) -m loracam.toy.controlnet --force

# Two test processes (pytest-xdist), whole files each (a file's module fixtures are made once): the process-level
# tests (web, workers, browser) mostly wait on their servers, and the other process computes meanwhile (681 s in
# one process, 401 s in two on 2 cores). tests/conftest.py gives each process, and what it starts, one thread.
TEST_JOBS ?= 2
test: setup system-tools
	$(PY) -m pytest -q --durations=10 -n $(TEST_JOBS) --dist loadfile

# nga_sweep is left out: a study of ~15 min per variant, run by name (benchmarks/README.md); workers_under_load too
# (~1 h: the workers' tests 30 times beside a busy loop);
# gpu_suite too: it measures a CUDA GPU (make gpu-suite)
BENCHES := gen_overhead prep_speed train_throughput grid_batching toy_quality numerics_cost upscale_speed toy_finish \
	controlnet_overhead toy_controlnet toy_studio toy_prompts toy_tune web_overhead web_generate worker_throughput

bench: setup
	@set -e; for b in $(BENCHES); do echo "== $$b"; $(PY) benchmarks/$$b.py; done

# Every GPU number at once (<= 8 min), for a short GPU lease; writes benchmarks/results/gpu_suite.json.
gpu-suite: setup
	$(PY) benchmarks/gpu_suite.py

clean-venv:
	rm -rf $(VENV)
