# Two commands from a fresh clone: `make test` and `make demo`. Both create .venv when it
# is missing and install the project editable, pinned by constraints.txt; a stamp file
# makes the second run quick.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gridlab-installed
PROTOS := $(wildcard proto/gridlab/v1/*.proto)

.PHONY: test test-all demo proto lint typecheck bench clean browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Every test that can run here; `gpu` tests skip themselves without CUDA, browser tests without chromium.
test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider

# The dashboard's browser tests (tests/test_web_browser.py) drive Debian's chromium through Playwright (never
# `playwright install`, which downloads a browser of its own). Installed here when missing and apt-get can
# (as root); elsewhere, or when that fails, those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser tests will skip"; \
	  else echo "no chromium (and no apt-get as root): the browser tests will skip"; fi; }

demo: $(STAMP)
	$(PY) examples/demo.py $(DEMO_ARGS)

proto: $(STAMP)
	$(PY) proto/generate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy cannot follow setuptools' editable finder, so it reads the `gridlab` namespace
# through a tree of links that mirrors the package-dir mapping.
typecheck: $(STAMP)
	rm -rf .mypy-src && mkdir -p .mypy-src/gridlab
	cp proto/gridlab/__init__.py proto/gridlab/py.typed .mypy-src/gridlab/
	ln -s ../../proto/gridlab/v1 .mypy-src/gridlab/v1
	for d in common scheduler agent client trainer; do ln -s ../../$$d .mypy-src/gridlab/$$d; done
	cd .mypy-src && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p gridlab.common -p gridlab.scheduler -p gridlab.agent -p gridlab.client -p gridlab.trainer
	cd .mypy-src && ../$(VENV)/bin/mypy --config-file ../pyproject.toml --strict -m gridlab.scheduler.state -m gridlab.scheduler.placement -m gridlab.scheduler.watchdog

bench: $(STAMP)
	$(PY) bench/submit_latency.py
	$(PY) bench/ddp_scaling.py
	$(PY) bench/log_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info
