# Two commands: `make demo` and `make test`. Both create .venv from requirements.txt when missing.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: venv demo test test-fast full clean

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(VENV_STAMP)

demo: venv
	$(PY) scripts/pipeline.py --work_dir work/demo --profile demo

full: venv
	$(PY) scripts/pipeline.py --work_dir work/full --profile full

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf work dist
