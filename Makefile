# FlexMesh developer entry points. `make demo` and `make test` create the virtualenv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flexmesh-installed

.PHONY: demo test lint bench proto install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: pip here finds the CPU wheel in a local wheel directory; from the
	# public index the same pin is the CUDA build (README, Install: the CPU index for that case).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flexmesh demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/flexmesh bench engine

# Regenerate the gRPC stubs under flexmesh/v1/ (never edit them by hand).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
		proto/flexmesh/v1/flexmesh.proto

clean:
	rm -rf $(VENV) build *.egg-info
