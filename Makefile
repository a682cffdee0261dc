# Modelship developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
export PYTHONPATH := $(CURDIR)/hack

.PHONY: help demo host-deps venv venv-convert crds rbac argocd argocd-build test test-unit test-integration test-e2e lint cluster-build cluster-up cluster-down cluster-status

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --progress-bar off -e '.[operator,runtime,dev]'
	touch $@

venv: $(VENV)/.installed  ## create .venv with every extra installed

venv-convert:  ## the converter venv (.venv-convert): PyTorch, TensorFlow, tf2onnx for the builder's framework tests
	PYTHON=$(PYTHON) bash hack/converter-env.sh venv .venv-convert

crds: venv  ## regenerate the CRD YAML (crds/ and the chart) from the pydantic models
	$(PY) -m modelship.api.crd crds charts/modelship/crds

rbac: venv  ## regenerate deploy/rbac.yaml and the chart's RBAC template from modelship/rbac.py
	$(PY) -m modelship.rbac > deploy/rbac.yaml
	$(PY) hack/chart_rbac.py

argocd: venv  ## regenerate deploy/argocd/argocd-cm.yaml from the Lua customizations beside it
	$(PY) hack/argocd_cm.py

test: host-deps venv venv-convert cluster-build  ## lint and every tier, e2e included (the README's test command; CI runs it)
	$(MAKE) lint
	$(PYTEST) -m "not e2e"
	$(PYTEST) -m e2e


test-unit: venv  ## pure unit tests (seconds)
	$(PYTEST) -m "not integration and not e2e and not slow"

test-integration: venv cluster-build  ## tests against a real control plane
	$(PYTEST) -m integration

test-e2e: host-deps venv cluster-build  ## end-to-end tests on the full local node
	$(PYTEST) -m e2e

lint: venv  ## ruff, mypy (strict), import-linter contracts
	$(VENV)/bin/ruff check operator runtime-image hack tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

cluster-build:  ## build (once, cached by version) etcd, Kubernetes, helm, CoreDNS, metrics-server
	bash hack/build-k8s.sh etcd kube-apiserver kube-controller-manager kubectl \
		kube-scheduler kubelet kube-proxy helm coredns metrics-server >/dev/null

argocd-build:  ## build Argo CD (once, cached by version); the tests that need it build it too
	bash hack/build-k8s.sh argocd >/dev/null

TIER ?= node
host-deps:  ## Debian packages of the local node and image builds (containerd, runc, CNI, Docker)
	bash hack/install-host-deps.sh

ARGOCD ?= 0
GATEWAY ?= 0
PROMETHEUS ?= 0
cluster-up: host-deps venv cluster-build  ## start the local cluster in .cache/cluster (TIER=node|control-plane; ARGOCD=1, GATEWAY=1, PROMETHEUS=1 add those)
	$(PY) -m localkube up --tier $(TIER) $(if $(filter-out 0,$(ARGOCD)),--argocd) \
		$(if $(filter-out 0,$(GATEWAY)),--gateway) $(if $(filter-out 0,$(PROMETHEUS)),--prometheus)

demo: host-deps venv cluster-build  ## the whole story on the local node: build, install, serve, infer
	$(PY) hack/demo.py

cluster-down: venv  ## stop the local control plane and remove its directory
	$(PY) -m localkube down

cluster-status: venv
	$(PY) -m localkube status
