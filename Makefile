# The verbs people type. Each delegates to ./dev, which works without make too.
.PHONY: help setup demo test lint protos up bench kube

help: ## show this help
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## install what is missing and create .venv
	./dev setup
demo: ## set up, then run the example pipeline on a local stack
	./dev demo
test: ## set up, lint, and run the whole test suite
	./dev test
lint: ## ruff, mypy and buf lint
	./dev lint
protos: ## regenerate the Python stubs from protos/
	./dev protos
up: ## start a local stack in the foreground
	./dev up
bench: ## run the benchmarks (not part of the tests)
	./dev bench
kube: ## build or reuse the kube-apiserver binaries for the Kubernetes tests
	./dev kube
