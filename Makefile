# The two commands of the README: `make demo` and `make test`.
VENV   ?= .venv
BASE   ?= nbcontainer/base:bookworm
IMAGE  ?= nbcontainer/python:3.11
KERNEL ?= py311-docker
PYTEST_ARGS ?=

export VENV

.PHONY: setup image kernelspec demo test unit bench gc clean

setup:
	scripts/setup.sh

image: setup
	$(VENV)/bin/nbcontainer image build --base $(BASE) --tag $(IMAGE)

kernelspec: image
	$(VENV)/bin/nbcontainer kernelspec install --image $(IMAGE) --name $(KERNEL) \
	  --display-name "Python 3.11 (Docker)"

# The main job: set everything up, then run examples/quickstart.ipynb in the container.
demo: kernelspec
	$(VENV)/bin/python examples/run_quickstart.py --kernel $(KERNEL)

test:
	scripts/setup.sh --browser
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

bench: kernelspec
	$(VENV)/bin/python bench/kernel_start.py --kernel $(KERNEL)

gc:
	$(VENV)/bin/nbcontainer gc

clean:
	rm -rf $(VENV) examples/output
