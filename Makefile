# Developer and CI entry points. Everything runs from the project virtualenv in .venv.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# ruff fails on paths that do not exist (bench/ may not yet)
LINT_PATHS := $(wildcard app agents models tests bench)
PYTEST_ARGS ?=

# make run CATALOG=path/to/catalog.json reports on that OSCAL catalog instead of the shared LOW baseline.
CATALOG ?=
CATALOG_ARG = $(if $(CATALOG),--catalog "$(CATALOG)")

.PHONY: venv test lint bench run preview

venv: $(STAMP)

# Reinstall only when pyproject.toml changed since the last successful install.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,embedded]'
	touch $@

test: venv
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

bench: venv
	@set -e; for file in $(sort $(wildcard bench/*.py)); do \
		name=$$(basename $$file .py); \
		[ "$$name" = __init__ ] && continue; \
		echo "== bench.$$name"; \
		$(PY) -m bench.$$name; \
	done

run: venv
	$(VENV)/bin/governance dev $(CATALOG_ARG)

# The first pages of a scorecard as PNG in var/preview (needs poppler-utils for pdftoppm).
preview: venv
	$(VENV)/bin/governance preview $(CATALOG_ARG)
