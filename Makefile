# Everyday commands. The real build is CMake (CMakeLists.txt); this file is
# a thin front end. Every target first runs scripts/deps.sh, which installs
# missing Debian packages (or prints the apt-get line when not root).

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
RESID_MODELS ?= $(abspath ../shared/models)
export RESID_MODELS
DEMO_MODEL ?= $(RESID_MODELS)/tinyllamas/stories260K.bin
DEMO_PROMPT ?= Once upon a time, there was a boy named Tim. Tim had a big red

.PHONY: all deps build test test-asan demo bench format clean fuzz valgrind

all: build

deps:
	@scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The same suite under AddressSanitizer + UBSan.
test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DRESID_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS)

# The demo needs only the command-line tool, not the test binaries.
demo: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target resid_cli
	@scripts/demo.sh $(BUILD)/resid "$(DEMO_MODEL)" "$(DEMO_PROMPT)"

bench: build
	@scripts/bench.sh $(BUILD)

format:
	@clang-format -i include/*.h src/*/*.[ch] cli/*.[ch] tests/*.c tests/support/*.[ch] bench/*.c

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

# libFuzzer targets (fuzz/), clang + ASan + UBSan in build-fuzz/, each run
# for FUZZ_SECONDS: exec/s and coverage per target. See scripts/fuzz.sh.
FUZZ_SECONDS ?= 60
fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

# The CLI under valgrind memcheck (zero errors, zero definite leaks).
valgrind: build
	@scripts/valgrind.sh $(BUILD)
