# ec2-isolation: every target sets itself up (`install` is idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins older boto3/botocore than the service uses: it lives in a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CURDIR)/$(CHECKOV_VENV)/bin/checkov
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install run test lint format demo bench openapi build deploy clean

install: $(STAMP)

$(CHECKOV):
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'checkov>=3.2,<4'

# A new top-level package (src/*, local/*) needs the editable install made again.
$(STAMP): pyproject.toml $(wildcard src/*/__init__.py local/*/__init__.py)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	@touch $(STAMP)

run: install
	$(BIN)/ec2-isolation serve --host $(HOST) --port $(PORT) --seed-demo

# The status page's tests drive Debian's Chromium: installed when missing and possible (root and apt);
# otherwise those tests are skipped, naming the command.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (apt)"; \
	    { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } >/dev/null 2>&1 \
	      || echo "could not install chromium: the browser tests will be skipped"; \
	  else echo "chromium is not installed (apt-get install chromium chromium-driver): the browser tests will be skipped"; fi; }

# Two workers (the machine's two cores); a test module stays on one worker, so its fixtures are shared.
# Modules are handed out in collection order (end to end first, the chaos test among the first), not
# xdist's default of most tests first, which left the longest single tests (chaos, four minutes) last
# with the other worker idle.
test: install $(CHECKOV) lint browser
	CHECKOV=$(CHECKOV) $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: install
	$(BIN)/ruff check src local tests scripts
	$(BIN)/ruff format --check src local tests scripts
	$(BIN)/mypy src local scripts
	$(BIN)/cfn-lint template.yaml iam-execution-role.yml regional-forwarder.yml

format: install
	$(BIN)/ruff format src local tests scripts
	$(BIN)/ruff check --fix src local tests scripts

demo: install
	$(BIN)/ec2-isolation demo

bench: install
	$(BIN)/python scripts/bench.py
	$(BIN)/python scripts/bench.py --warm-environments
	$(BIN)/python scripts/import_cost.py

# After changing the API: regenerate the committed OpenAPI document (a test fails while it drifts).
openapi: install
	$(BIN)/python scripts/openapi.py

# Deployment needs the AWS SAM CLI and credentials for the security (operations) account.
build:
	sam build

deploy: build
	sam deploy --guided

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .aws-sam .pytest_cache .ruff_cache
