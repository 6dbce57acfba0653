# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtual environment .venv and install tinymoe into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tinymoe-installed

.PHONY: demo test test-slow install firmware-tools firmware-libs board-tools clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tinymoe demo --out runs/demo

# The firmware tests build the app for Cortex-M3 and M7 and run it under QEMU: Debian's cross
# toolchain (the compiler, its C library and C++ headers) and emulator. The check that decides
# is the tests' own (firmware_export: make check-toolchain, a C++ program built with each
# target's flags); what it finds missing is installed here in a root shell with apt-get (CI).
# Elsewhere those tests skip and say why. The TFLM library they need is built on first use
# (firmware_export/Makefile: 10-20 minutes per target on 2 cores, cached in ~/.cache/tinymoe).
CORTEX_M_READY = $(MAKE) -s --no-print-directory -C firmware_export TARGET=cortex-m3-qemu \
	check-toolchain && $(MAKE) -s --no-print-directory -C firmware_export \
	TARGET=cortex-m7-qemu check-toolchain
firmware-tools:
	@if ! ($(CORTEX_M_READY)) 2>/dev/null; \
	then if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then $(MAKE) -C firmware_export cortex-m-tools; \
	else echo "The Cortex-M firmware tests will skip:" \
	"$$( ($(CORTEX_M_READY)) 2>&1 | grep -v '^make' | head -n 1)" \
	"(sudo make -C firmware_export cortex-m-tools installs the Debian packages)." >&2; fi; fi

# TFLM's library for the host, Cortex-M3 and Cortex-M7 (CMSIS-NN), built before the tests so
# that its progress shows (5-12 minutes each on 2 idle cores the first time; cached after).
firmware-libs: $(STAMP) firmware-tools
	@if $(MAKE) -s -C firmware_export print-tflm >/dev/null 2>&1; then \
	$(MAKE) -C firmware_export tflm && \
	if ($(CORTEX_M_READY)) 2>/dev/null; then \
	$(MAKE) -C firmware_export TARGET=cortex-m3-qemu tflm && \
	$(MAKE) -C firmware_export TARGET=cortex-m7-qemu tflm; fi; \
	else echo "No TFLM sources (../shared/third_party): the firmware build tests will skip." >&2; fi

# The board-library tests (tests/test_board_library.py): Debian's arduino-builder builds the
# exported Arduino library's example for QEMU's Cortex-M4F and M7 boards, and two PyPI tools
# lint the exported manifests offline (PlatformIO's `pio pkg pack`, ESP-IDF's `compote
# manifest lint`), kept in their own environment, .venv-lint, away from TensorFlow's pins.
# Without them those tests skip and say why.
LINT_VENV := .venv-lint
LINT_STAMP := $(LINT_VENV)/.installed
board-tools: $(LINT_STAMP)
	@if ! command -v arduino-builder >/dev/null; then \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then (apt-get update && apt-get install -y --no-install-recommends arduino-builder) \
	|| echo "Could not install arduino-builder: the Arduino library build tests will skip." >&2; \
	else echo "No arduino-builder: the Arduino library build tests will skip" \
	"(apt-get install --no-install-recommends arduino-builder, as root)." >&2; fi; fi

$(LINT_STAMP):
	test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet platformio==6.2.0 idf-component-manager==3.1.2 \
	|| echo "Could not install platformio / idf-component-manager: the manifest lint tests will skip." >&2
	touch $(LINT_STAMP)

test: $(STAMP) firmware-libs board-tools
	$(BIN)/python -m pytest

test-slow: $(STAMP) firmware-libs board-tools
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) $(LINT_VENV) build *.egg-info .pytest_cache
