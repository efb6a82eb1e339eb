# Thin wrapper around Meson. `make test` does the whole setup on a fresh Debian 12 machine:
# installs missing packages (apt-get, only when missing), configures, builds, tests.
BUILD   ?= build
MNT     ?= $(CURDIR)/mnt
PYTHON  := /usr/bin/python3
PKGS    := gcc libc6-dev make libfuse3-dev fuse3 libconfuse-dev libjansson-dev libjemalloc-dev liburing-dev \
           meson ninja-build pkg-config python3-pytest fio attr psmisc procps uthash-dev \
           libxxhash-dev libsodium-dev
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build deps setup test bench run stop clean

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

bench: build
	$(BUILD)/tests/bench/alloc-bench --threads 1,2 --seconds 2
	$(BUILD)/tests/bench/img-bench
	$(BUILD)/tests/replica/rep-bench
	$(PYTHON) tests/bench/imagebench.py --heapfs $(BUILD)/fs/heapfs --heapfsctl $(BUILD)/fs/ctl/heapfsctl
	$(PYTHON) tests/bench/fsbench.py --heapfs $(BUILD)/fs/heapfs
	@echo "--- the same small-request jobs with the experimental -o io_uring transport:"
	$(PYTHON) tests/bench/fsbench.py --heapfs $(BUILD)/fs/heapfs --heapfs-opts io_uring --only rand,files
	$(PYTHON) tests/bench/replbench.py --heapfs $(BUILD)/fs/heapfs
	$(PYTHON) tests/bench/poolbench.py --heapfs $(BUILD)/fs/heapfs
	$(PYTHON) tests/bench/clientbench.py --heapfs $(BUILD)/fs/heapfs --bench $(BUILD)/tests/bench/client-bench

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
