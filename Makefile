# Thin wrapper around Meson. `make test` does the whole setup on a fresh Debian 12 machine:
# installs missing packages (apt-get, only when missing), configures, builds, tests.
BUILD   ?= build
MNT     ?= $(CURDIR)/mnt
PYTHON  := /usr/bin/python3
PKGS    := gcc libc6-dev make libfuse3-dev fuse3 libconfuse-dev libjansson-dev libjemalloc-dev liburing-dev \
           meson ninja-build pkg-config python3-pytest fio attr psmisc procps uthash-dev \
           libxxhash-dev libsodium-dev libssl-dev clang libclang-rt-14-dev scdoc systemd python3-matplotlib \
           pacemaker corosync pacemaker-cli-utils resource-agents iproute2 acl libcap2-bin tcpdump
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build deps setup test bench fuzz run stop clean

all build: setup
	ninja -C $(BUILD)

deps:
	@missing=$$(for p in $(PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

setup: deps
	@[ -f $(BUILD)/build.ninja ] || meson setup $(BUILD)

test: build
	@rc=0; meson test -C $(BUILD) --print-errorlogs --num-processes 2 || rc=$$?; \
	$(PYTHON) tests/summary.py $(BUILD)/meson-logs/testlog.json; exit $$rc

# every benchmark, each against its baseline in the same run; writes docs/BENCHMARKS.md and
# docs/bench/ (results.json, one picture per family).  BENCH_ARGS="--quick" checks the
# harness at small sizes; --only FAMILY,... picks some (tests/bench/bench.py --help).
bench: build
	$(PYTHON) tests/bench/bench.py --build $(BUILD) --out docs $(BENCH_ARGS)

# libFuzzer: every harness in tests/fuzz for FUZZ_SECONDS each (FUZZERS= to pick some),
# starting from its committed corpus; new inputs go to $(FUZZ_BUILD)/corpus/NAME, crashes
# to $(FUZZ_BUILD)/crashes/NAME/ (add each to tests/fuzz/corpus/NAME once fixed).
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZERS      ?= $(patsubst tests/fuzz/fuzz-%.c,%,$(wildcard tests/fuzz/fuzz-*.c))
fuzz: deps
	@[ -f $(FUZZ_BUILD)/build.ninja ] || CC=clang meson setup $(FUZZ_BUILD) -Dfuzzing=true -Dwerror=false
	ninja -C $(FUZZ_BUILD) $(addprefix tests/fuzz/fuzz-,$(FUZZERS))
	@rc=0; for f in $(FUZZERS); do \
		mkdir -p $(FUZZ_BUILD)/corpus/$$f $(FUZZ_BUILD)/crashes/$$f; \
		echo "--- fuzz-$$f for $(FUZZ_SECONDS) s"; \
		$(FUZZ_BUILD)/tests/fuzz/fuzz-$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=$(FUZZ_BUILD)/crashes/$$f/ \
			$(FUZZ_BUILD)/corpus/$$f tests/fuzz/corpus/$$f 2>&1 | \
			grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)' || true; \
		ls $(FUZZ_BUILD)/crashes/$$f | grep -q . && { echo "fuzz-$$f: crashes in $(FUZZ_BUILD)/crashes/$$f"; rc=1; }; \
	done; exit $$rc

run: build
	@mkdir -p $(MNT)
	$(BUILD)/fs/heapfs $(MNT)
	@echo "heapfs mounted at $(MNT) with the embedded default config."
	@echo "  try:     ls $(MNT); df -h $(MNT)/heaps/scratch; cat $(MNT)/.heapfs/stats"
	@echo "           $(BUILD)/fs/ctl/heapfsctl stats $(MNT)"
	@echo "  unmount: make stop   (or: fusermount3 -u $(MNT))"

stop:
	fusermount3 -u $(MNT)

clean:
	rm -rf $(BUILD)
