# The two commands of the README: `make demo` and `make test`.
VENV   ?= .venv
BASE   ?= nbcontainer/base:bookworm
IMAGE  ?= nbcontainer/python:3.11
KERNEL ?= py311-docker
PYTEST_ARGS ?=

export VENV

.PHONY: setup venv image kernelspec demo demo-aws test lint format unit bench gc clean

setup:
	scripts/setup.sh

# The virtualenv alone: no Docker engine, no base image (what lint and unit need).
venv:
	scripts/setup.sh --venv-only

image: setup
	$(VENV)/bin/nbcontainer image build --base $(BASE) --tag $(IMAGE)

kernelspec: image
	$(VENV)/bin/nbcontainer kernelspec install --image $(IMAGE) --name $(KERNEL) \
	  --display-name "Python 3.11 (Docker)"

# The main job: set everything up, then run examples/quickstart.ipynb in the container.
demo: kernelspec
	$(VENV)/bin/python examples/run_quickstart.py --kernel $(KERNEL)

# The same cell on AWS Batch, against the test bed (moto + docker-registry on 127.0.0.1).
demo-aws: setup
	scripts/aws-testbed.sh start > /dev/null
	env $$(scripts/aws-testbed.sh env | xargs) NBCONTAINER_BASE_IMAGE=$(BASE) \
	  $(VENV)/bin/python examples/batch_demo.py; \
	  status=$$?; scripts/aws-testbed.sh stop; exit $$status

# Lint first: CI runs this target, so the gates hold on every landing.
test: lint
	scripts/setup.sh --browser
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# ruff (pycodestyle, pyflakes, isort, bugbear, pyupgrade, complexity, simplifications;
# formatting), mypy --strict on the package and mypy on tests, bench and scripts. The
# same gates run before each commit with `pre-commit install` (.pre-commit-config.yaml).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --config-file mypy-tests.ini

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The tests that need no Docker engine and no root: seconds, on any machine with Python
# (three workers on two cores: many tests wait on a subprocess or a socket; idle workers
# steal queued tests; property tests with a tenth of their examples, which `make test`
# runs in full; bytecode cached even where the environment turns that off).
unit: venv
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/python -m pytest tests/unit -n 3 \
	  --dist worksteal -p no:cacheprovider --hypothesis-profile=unit $(PYTEST_ARGS)

bench: image
	$(VENV)/bin/python bench/kernel_start.py --image $(IMAGE)

gc:
	$(VENV)/bin/nbcontainer gc

clean:
	rm -rf $(VENV) examples/output
