# The two commands of the README. Each makes its own virtual environment (.venv) and
# installs what it needs, so a fresh machine with only Python 3.10+ runs them as they are.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test bench clean

demo: $(INSTALLED)
	$(VENV)/bin/python examples/policy_spread.py

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest

bench: $(INSTALLED)
	$(VENV)/bin/python benchmarks/bench_pick.py

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

clean:
	rm -rf $(VENV) build *.egg-info
