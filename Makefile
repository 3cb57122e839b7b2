# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv when it is missing and install the project with its test extra,
# pinned by constraints.txt (name==version lines; no index URLs).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

export GRPC_VERBOSITY ?= ERROR

.PHONY: all test demo ca-demo proto bench bench-sidecar lint-policies clean-venv help

help:
	@echo "make demo     - the whole mesh on loopback: allowed (XFCC), forbidden path (403), denied identity, plaintext refused, rotation"
	@echo "make ca-demo  - the CA alone: init, issue, verify with openssl, revoke, CRL, SPIFFE bundle"
	@echo "make test     - run the whole test suite (unit, conformance, fuzz, integration, e2e)"
	@echo "make proto    - regenerate the gRPC stubs from secmesh/proto/*.proto"
	@echo "make lint-policies - lint and test the policies in policies/ with secmesh itself"
	@echo "make bench    - the CA, authz, policy-tool and SDS fan-out benchmarks in bench/"
	@echo "make bench-sidecar - the sidecar L4 and L7 (h1, h2, gRPC) benchmarks vs HAProxy (needs haproxy nginx wrk h2load)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/secmesh demo $(DEMO_ARGS)

ca-demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash ca/demo.sh

proto: $(STAMP)
	$(BIN)/python -m secmesh.proto.generate

lint-policies: $(STAMP)
	$(BIN)/python -m secmesh policy lint --strict policies/
	$(BIN)/python -m secmesh policy test --coverage policies/

bench: $(STAMP)
	$(BIN)/python bench/ca_issue.py
	$(BIN)/python bench/authz.py
	$(BIN)/python bench/policy_tools.py
	$(BIN)/python bench/sds_fanout.py

bench-sidecar: $(STAMP)
	bash bench/sidecar.sh
	bash bench/sidecar_l7.sh

clean-venv:
	rm -rf $(VENV)
