# StudyStream: `make run` starts the whole pipeline, `make test` runs every test on the real stack.
# Both install what is missing first (virtualenv + pip packages, Java, Maven, dcmtk, chromium for the
# browser test, docker-compose to check the compose file).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench deps system-deps stack-up stack-down lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# Debian packages the stack and the interop tests need; each installed only when absent.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jdk-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	[ -x /usr/bin/storescu ] || missing="$$missing dcmtk"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

deps: $(STAMP) system-deps

stack-up: deps
	$(BIN)/studystream stack up

stack-down:
	$(BIN)/studystream stack down

run: deps
	$(BIN)/studystream run

test: deps stack-up
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: deps stack-up
	$(BIN)/python -m bench

lint: deps
	$(BIN)/ruff check .

clean:
	-$(BIN)/studystream stack down
	rm -rf $(VENV) state
