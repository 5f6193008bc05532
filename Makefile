# assistantapp — common tasks. Run as root on Debian 12 (apt packages are installed on demand).
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMTOOL := .tmp/tools/promtool
APT_PACKAGES := python3-venv python3-dev build-essential postgresql redis-server nginx wrk \
	debootstrap systemd-container nftables iproute2 openssh-client rsync curl chromium chromium-driver

.PHONY: help setup apt venv test lint molecule bench deploy-local clean

help:
	@echo "make test        - install what is needed, lint-free unit/integration tests with coverage"
	@echo "make lint        - ruff, mypy, yamllint, ansible-lint"
	@echo "make molecule    - every Molecule scenario on systemd-nspawn hosts"
	@echo "make bench       - throughput/latency benchmark (wrk, loopback)"
	@echo "make deploy-local - one local host, site.yml, prints the HTTPS URL"

setup: apt venv

# Installs only what is missing, so re-runs are fast and need no network.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing apt packages (run as root): $$missing"; exit 1; fi; \
		echo "apt: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(BIN)/activate: requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(BIN)/activate

venv: $(BIN)/activate

# scripts/record-results passes the output through, records the result for the commit in
# .tmp/results/<sha>.json (the deploy gate reads it via the artifact's manifest) and exits
# with the command's own status, so a failing step still fails the target.
RECORD := scripts/record-results

test: setup
	$(RECORD) tests -- $(BIN)/pytest -n 2 --dist loadscope --cov=app --cov-report=term --cov-fail-under=80 -p no:cacheprovider $(PYTEST_ARGS)

# pip-audit is recorded, not fatal here: whether a pin is known-vulnerable changes without a
# commit (and it needs PyPI); the deploy gate refuses "vulnerable" and "incomplete" audits.
lint: venv $(PROMTOOL)
	$(RECORD) ruff -- $(BIN)/ruff check app tests bench testhosts
	$(RECORD) mypy -- $(BIN)/mypy app
	$(RECORD) yamllint -- $(BIN)/yamllint -s .
	$(RECORD) ansible-lint -- $(BIN)/ansible-lint --profile production --offline
	$(RECORD) promtool -- $(PROMTOOL) check rules roles/monitoring/files/etc/prometheus/rules/*.yml
	$(RECORD) promtool-tests -- $(PROMTOOL) test rules roles/monitoring/tests/*.test.yml
	-$(RECORD) pip-audit -- $(BIN)/pip-audit --requirement requirements.lock --no-deps --disable-pip --progress-spinner=off

# promtool from Debian's prometheus package, unpacked only (installing the package would
# start a Prometheus server on this machine).
$(PROMTOOL):
	@mkdir -p $(@D)/deb
	cd $(@D)/deb && { apt-get download -q prometheus 2>/dev/null || { apt-get update -qq && apt-get download -q prometheus; }; }
	dpkg-deb --fsys-tarfile $(@D)/deb/prometheus_*.deb | tar -xO ./usr/bin/promtool > $@.partial
	chmod 0755 $@.partial && mv $@.partial $@
	rm -rf $(@D)/deb

deploy-local:
	scripts/local-deploy

molecule: setup
	molecule/run-all

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf .tmp .coverage .coverage.* htmlcov build dist *.egg-info
