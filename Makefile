# First commands on a fresh machine: `make demo` and `make test`; both set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU wheel of torch; a plain `pip install torch` would download a multi-GB CUDA build.
TORCH_PIN     ?= torch==2.13.0
INTERNEVO_PIN ?= internevo==0.4.9
PYTEST_ARGS   ?=

SAMPLE := data/sample
SAMPLE_DATA := $(SAMPLE)/tokenized/.done

.PHONY: install test unit integration demo bench clean

install: $(STAMP) $(SAMPLE_DATA)

# The bundled sample's tokenizer and InternEvo-format data (configs/tiny_cpu.py trains on them).
# They depend on the code that makes them, so a checkout whose tokenizer rules changed rebuilds them.
$(SAMPLE_DATA): $(STAMP) $(SAMPLE)/train.jsonl $(SAMPLE)/valid.jsonl rethinktiny/data/prepare.py
	$(BIN)/rethinktiny data train-tokenizer --input $(SAMPLE)/train.jsonl --vocab-size 4096 --dst $(SAMPLE)/tokenizer --force
	$(BIN)/rethinktiny data tokenize --input $(SAMPLE)/train.jsonl --tokenizer $(SAMPLE)/tokenizer --dst $(SAMPLE)/tokenized/train --force
	$(BIN)/rethinktiny data tokenize --input $(SAMPLE)/valid.jsonl --tokenizer $(SAMPLE)/tokenizer --dst $(SAMPLE)/tokenized/valid --force
	touch $@

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	# 0.4.9 is the newest complete InternEvo wheel; --no-deps skips its CUDA-only sdists.
	$(BIN)/python -m pip install -q --no-deps "$(INTERNEVO_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev,hf]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m rethinktiny.demo --sample $(SAMPLE) $(if $(FORCE),--force,)

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf outputs .pytest_cache
