# liner: the two commands are `make run` and `make test`; both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the daemon and the test suite use (ctr comes from containerd; its daemon is never started).
# The golang-*-dev packages carry containerd's own .proto files: a test compares ours with them.
DEB_PACKAGES := python3-venv runc crun conmon containerd busybox-static docker-registry skopeo gnupg \
	umoci prometheus systemd golang-github-containerd-containerd-dev \
	golang-github-containerd-cgroups-dev containernetworking-plugins \
	iptables tinyproxy
STAMP := $(VENV)/.installed

.PHONY: setup deps proto run test test-unit test-reference lint install bench clean

# Byte-compiled once here: where PYTHONDONTWRITEBYTECODE is set, every linerd start (the tests
# start hundreds) and every `liner` call would otherwise compile ~150 modules (~0.25 s). The
# daemon's own lean code cache (linerd/leancode.py) is filled too.
setup: deps $(STAMP)
	@$(BIN)/python -m compileall -q api common daemon client
	@$(BIN)/python -m linerd.leancode >/dev/null

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[daemon,dev,sign]'
	touch $@

proto: setup
	$(BIN)/python api/generate.py

# Metrics on 127.0.0.1:1338 (containerd's debug port) at /v1/metrics.
METRICS_ADDRESS ?= 127.0.0.1:1338

run: setup
	$(BIN)/linerd --metrics-address $(METRICS_ADDRESS) $(ARGS)

# The CRI tests' runs against containerd (marker `reference`) are `make test-reference`:
# they check the tests' expectations on the reference implementation, not liner, and would
# add minutes to every run. .ci/run calls both.
test: setup
	$(BIN)/pytest -m "not reference" $(PYTEST_ARGS)

test-reference: setup
	$(BIN)/pytest -m reference tests/integration $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

# liner vs containerd side by side (bench/README.md); BENCH_ARGS e.g. --tmpfs, --load, --smoke.
# Needs what `deps` installs plus debootstrap (the `deb` image), Debian's containerd (the peer
# daemon and ctr) and docker-registry.
BENCH_PACKAGES := containerd debootstrap docker-registry skopeo runc conmon
BENCH_ARGS ?=

bench: setup
	@missing=$$(for p in $(BENCH_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python api/generate.py --check

# A system install: the package in its own virtualenv under $(PREFIX_VENV), the commands in
# /usr/local/bin, the systemd unit, and the default config (kept if one is there).
PREFIX_VENV ?= /opt/liner
install: deps
	$(PYTHON) -m venv $(PREFIX_VENV)
	$(PREFIX_VENV)/bin/pip install -q --upgrade pip
	$(PREFIX_VENV)/bin/pip install -q '.[daemon]'
	$(PREFIX_VENV)/bin/python -m linerd.leancode
	ln -sf $(PREFIX_VENV)/bin/linerd /usr/local/bin/linerd
	ln -sf $(PREFIX_VENV)/bin/liner /usr/local/bin/liner
	install -D -m 0644 deploy/systemd/linerd.service /etc/systemd/system/linerd.service
	install -D -m 0644 README.md /usr/local/share/doc/liner/README.md
	mkdir -p /etc/liner
	[ -e /etc/liner/config.toml ] || $(PREFIX_VENV)/bin/linerd config-default > /etc/liner/config.toml
	-systemctl daemon-reload 2>/dev/null

clean:
	rm -rf $(VENV) build *.egg-info
