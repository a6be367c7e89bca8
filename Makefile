# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv when it is missing and
# installs the project into it; the stamp file makes a second run install nothing new.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.abaw-ce-installed
# Known-good torch pair (CUDA build on x86_64; the same wheels serve CPU-only machines).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: demo test install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/abaw-ce demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_OUT)
