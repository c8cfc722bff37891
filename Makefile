# Every target sets up .venv itself; nothing else is needed on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_WORKERS ?= 2
OUT     := out

.PHONY: setup models demo test test-fast conformance bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

models: $(STAMP)
	$(BIN)/python models/fetch.py

demo: $(STAMP)
	@mkdir -p $(OUT)
	$(BIN)/onnxopt info models/demo/ppocr_cls.onnx | head -12
	$(BIN)/onnxopt optimize models/demo/ppocr_cls.onnx -o $(OUT)/ppocr_cls.opt.onnx \
		--inputs models/demo/ppocr_cls_inputs.npz --validate --threads 1 --verify-each --time-passes \
		--report $(OUT)/ppocr_cls.report.html
	@echo "report: $(OUT)/ppocr_cls.report.html"

# Unit, golden, CLI, real-model and conformance tests (slow ones included; CI runs this).
test: $(STAMP) models
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) tests

# Quick loop while developing: no slow tests, no conformance.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" tests --ignore=tests/conformance

conformance: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) tests/conformance

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
