# The README's commands. Each makes its own virtual environment (.venv) and installs what it
# needs, so a fresh machine with only Python 3.10+ (and make) runs them as they are.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed-test-gateway
BENCH_INSTALLED := $(VENV)/.installed-bench

# The servers the tests run for real, from Debian's packages (apt-get, as root), installed only
# when missing: a DNS server (dnsmasq) and etcd for discovery, Prometheus (and its promtool)
# to scrape the metrics, headless Chromium to render the status page.
SYSTEM_PACKAGES := dnsmasq-base etcd-server prometheus chromium fonts-dejavu-core
SYSTEM_COMMANDS := dnsmasq etcd prometheus promtool chromium

.PHONY: demo test test-core system-packages check typecheck lint layering bench quality bench-proxy clean

demo: $(INSTALLED)
	$(VENV)/bin/python -m lbmiddleware demo

# Everything CI checks: the type check, the linter and the layering test (`make check`), then
# every test. Both parts always run; any failure fails the command.
test: $(INSTALLED) system-packages
	@status=0; $(MAKE) --no-print-directory -k check || status=1; \
	$(VENV)/bin/python -m pytest || status=1; exit $$status

# The standard-library core's tests alone (seconds); `make test` runs these and the rest.
test-core: $(INSTALLED)
	$(VENV)/bin/python -m pytest -m core

# The type check (settings in setup.cfg), the linter (pyproject.toml) and the import-direction
# test; `make test` runs them first.
check: typecheck lint layering

typecheck: $(INSTALLED)
	$(VENV)/bin/python -m mypy

lint: $(INSTALLED)
	$(VENV)/bin/python -m ruff check lbmiddleware tests benchmarks examples

layering: $(INSTALLED)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_layering.py

bench: $(INSTALLED)
	$(VENV)/bin/python benchmarks/bench_pick.py
	$(VENV)/bin/python benchmarks/bench_update.py
	$(VENV)/bin/python benchmarks/bench_adapter.py
	$(VENV)/bin/python benchmarks/bench_chunked.py

quality: $(BENCH_INSTALLED)
	$(VENV)/bin/python benchmarks/bench_quality.py

bench-proxy: $(BENCH_INSTALLED)
	$(VENV)/bin/python benchmarks/bench_proxy.py

system-packages:
	@missing=; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	[ -z "$$missing" ] || { \
	  echo "installing $(SYSTEM_PACKAGES) (apt-get) for the integration tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test,gateway]'
	touch $(INSTALLED)

$(BENCH_INSTALLED): $(INSTALLED)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,gateway,bench]'
	touch $(BENCH_INSTALLED)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache
