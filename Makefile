# liner: the two commands are `make run` and `make test`; both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the daemon and the test suite use (ctr comes from containerd; its daemon is never started).
DEB_PACKAGES := python3-venv runc conmon containerd busybox-static docker-registry skopeo umoci
STAMP := $(VENV)/.installed

.PHONY: setup deps proto run test test-unit lint clean

setup: deps $(STAMP)

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

proto: setup
	$(BIN)/python api/generate.py

run: setup
	$(BIN)/linerd $(ARGS)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python api/generate.py --check

clean:
	rm -rf $(VENV) build *.egg-info
