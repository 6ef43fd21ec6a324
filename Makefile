# Fresh machine: `make quickstart` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup quickstart test lint benchmark clean

$(BIN)/chartwiz: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, so the resolver keeps this CPU build instead of fetching another one
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/chartwiz

quickstart: setup
	$(BIN)/chartwiz init-tiny outputs/tiny-chartwiz --overwrite
	$(BIN)/chartwiz synth outputs/synth --n 20 --seed 0 --overwrite
	$(BIN)/chartwiz data build --data-dir outputs/synth --gpt outputs/synth/gpt_qa.jsonl --out outputs/charts
	$(BIN)/chartwiz ask --model outputs/tiny-chartwiz "outputs/synth/test/img_data/img_vertical bar_standard/S_0_0000000_vertical_bar.jpg" "가장 큰 값은 무엇인가요?" --max-new-tokens 16

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
