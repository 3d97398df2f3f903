# Two commands for a newcomer: `make demo` and `make test`. Everything runs inside .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data
# CPU demo: a narrow U-Net trained briefly; README "Quick start" says what it reaches, in how long, and how it
# differs from the published recipe (parameters.json).
DEMO_TRAIN_FLAGS ?= -e 3 -l 0.15 -b 16 --base-channels 8 --schedule cosine --warmup-fraction 0.05
DEMO_PREDICT_FLAGS ?= --tta --blend gaussian
# the second synthetic set's recipe (issue 14: test mIoU >= 0.98 within 600 s), timed stage by stage by the benchmark;
# README "A second synthetic set" says what it reaches. --compile needs a C++ compiler (g++ or clang++).
ALTERNATE_FLAGS ?= --generator alternate --n-training 400 --per-image 5 --foreground-fraction 0.75 --loss dice_ce --epochs 12 --batch-size 8 --lr 0.1 --compile default
RUN ?= demo_$(shell date +%Y%m%d-%H%M%S)
# once: a ?= variable runs `date` at each use, and the train and predict lines could name two seconds
RUN := $(RUN)

.PHONY: demo demo-alternate setup test lint bench figures

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

$(DATA)/images_training/.complete.json: | $(VENV)/.installed
	$(PY) -m lib.generate

$(DATA)/patches_s96/.complete.json: $(DATA)/images_training/.complete.json
	$(PY) -m lib.prepare

demo: $(DATA)/patches_s96/.complete.json
	$(PY) train.py $(DEMO_TRAIN_FLAGS) -f patches_s96 --name $(RUN)
	$(PY) predict.py $(DEMO_PREDICT_FLAGS) --checkpoint checkpoints/$(RUN)/best.pth --input $(DATA)/images_test/images \
		--masks $(DATA)/images_test/masks --output $(DATA)/predictions/$(RUN) --metrics checkpoints/$(RUN)/test_metrics.json

# the demo's stages on the second synthetic set, in a temporary folder (data/, checkpoints/ and runs/ untouched)
demo-alternate: $(VENV)/.installed
	$(PY) -m benchmarks.time_to_accuracy --skip-setup $(ALTERNATE_FLAGS)

# one test worker per core (at most 4), each test file on one worker so that its fixtures are built once
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))" 2>/dev/null || echo 2)

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.dev-installed
	$(PY) -m benchmarks.run_all

# README figures from the newest trained run (or CHECKPOINT=...), of parameters.json's data (or PARAMS=...), into
# figures/ (or OUT=...: figures of your own data, the README's left as they are)
figures: $(VENV)/.installed
	@checkpoint="$(or $(CHECKPOINT),$$(ls -t checkpoints/*/best.pth 2>/dev/null | head -1))"; \
	if [ -z "$$checkpoint" ]; then echo "error: no checkpoints/*/best.pth: run make demo first, or pass CHECKPOINT=PATH" >&2; exit 2; fi; \
	echo "$(PY) -m figures.make_figures --checkpoint $$checkpoint $(if $(PARAMS),--params $(PARAMS)) $(if $(OUT),--out $(OUT))"; \
	$(PY) -m figures.make_figures --checkpoint "$$checkpoint" $(if $(PARAMS),--params $(PARAMS)) $(if $(OUT),--out "$(OUT)")
