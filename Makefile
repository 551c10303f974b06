# spinexr-node: the two commands are `make serve` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.spinexr-install-stamp
PYTEST_ARGS ?=
FUZZ_ARGS ?= --inputs 100000 --seed 1 --out var/fuzz
SOAK_ARGS ?= --studies 100 --per-study 20 --seed 1

.PHONY: serve test install system-deps viewer-deps viewer-check lint format bench fuzz soak clean help

help:
	@echo "make serve   install (if needed) and run the node on the embedded default"
	@echo "make test    install (if needed) and run the whole test suite"
	@echo "make lint    ruff + mypy"
	@echo "make viewer-check  only the OHIF viewer tests (tests/viewers/; make test runs them too)"
	@echo "make fuzz    fuzz campaign against a live node (FUZZ_ARGS=\"--inputs 100000 --seed 1\")"
	@echo "make soak    kill soak, embedded then scaled out (SOAK_ARGS=\"--studies 100 --per-study 20\")"

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/build-mmcv-wheel.sh
	@bash scripts/install.sh

system-deps:
	@bash scripts/system-deps.sh

viewer-deps:
	@bash scripts/viewer-deps.sh

serve: install
	@$(VENV)/bin/spinexr-node serve --demo-bundle

test: install system-deps viewer-deps
	SPINEXR_REQUIRE_TOOLS=1 $(VENV)/bin/pytest $(PYTEST_ARGS)

viewer-check: install viewer-deps
	SPINEXR_REQUIRE_TOOLS=1 $(VENV)/bin/pytest tests/viewers $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash scripts/typecheck.sh

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

fuzz: install
	nice -n 10 $(PY) -m spinexr.fuzz $(FUZZ_ARGS)

soak: install system-deps
	$(PY) benchmarks/soak.py --mode embedded $(SOAK_ARGS)
	$(PY) benchmarks/soak.py --mode scaled $(SOAK_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
