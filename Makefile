# Two commands set everything up on a fresh machine:
#   make run    install what is missing, then run the daemon on embedded defaults
#   make test   install what is missing, then run the whole test suite
# Everything else is a convenience for developers.

VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers; the suite is parallel-safe (free ports, one database per test)
JOBS   ?= auto

.PHONY: run test setup lint typecheck bench eval clean

$(STAMP): pyproject.toml scripts/setup.sh
	./scripts/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/mailingest serve $(if $(CONFIG),--config $(CONFIG))

test: $(STAMP)
	$(BIN)/pytest -n $(JOBS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mailingest tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/smtp_throughput.py

# extraction accuracy over the shared corpus (per-field accuracy, mismatches listed)
CORPUS ?= ../shared/corpus
eval: $(STAMP)
	$(BIN)/mailingest eval $(CORPUS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
