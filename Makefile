# andon: two commands for a new user (README.md):
#   make run    set everything up, then run the agent: andon's default rules, alerts on stdout, and
#               protocol tracing into /var/lib/andon (andon run)
#   make test   set everything up, then run the whole test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
CLANG ?= clang
BPF_SRCS := $(wildcard bpf/*/*.bpf.c)
BPF_OBJS := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRCS))
BPF_HDRS := $(wildcard bpf/include/*.h bpf/abi/*.h)
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

.PHONY: setup deps venv bpf test-image test-go run test test-unit bench clean

setup: deps venv bpf

# system packages (apt) and kernel mounts; idempotent, skipped quickly when present
deps:
	@bash scripts/setup.sh

$(BIN)/andon: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/andon

$(BUILD)/include/vmlinux.h:
	@mkdir -p $(dir $@)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

BPF_CFLAGS = -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Wno-unused-function -I$(BUILD)/include -Ibpf/include

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS) $(BUILD)/include/vmlinux.h
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

bpf: $(BPF_OBJS)

# the tp_btf build #includes the raw_tp source: rebuild it when that changes
$(BUILD)/bpf/syscalls/sys_exit_btf.bpf.o: bpf/syscalls/sys_exit.bpf.c

# bench only (bench/tracers.py build_socktp): the socket sensor's body on other hooks, an
# experiment; it #includes the sensor's source
$(BUILD)/bench/socktp/sockdata.bpf.o: bench/workloads/sockdata_socktp.bpf.c bpf/net/sockdata.bpf.c $(BPF_HDRS) \
		$(BUILD)/include/vmlinux.h
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# the minimal Debian image the container tests run (debootstrap + podman import, once)
test-image: deps
	@bash scripts/build-test-image.sh

# a Go HTTPS server and client (Go's own crypto/tls, no OpenSSL) for the tests and benchmarks
# of Go TLS tracing; its build cache stays in build/
# (and the same stripped by Go's linker, as release builds often are: no ELF symbols, no DWARF)
$(BUILD)/go/tlsdemo: tests/go/tlsdemo/main.go tests/go/tlsdemo/go.mod
	@mkdir -p $(dir $@)
	cd tests/go/tlsdemo && GOCACHE=$(CURDIR)/$(BUILD)/go/cache GOFLAGS=-trimpath GOTOOLCHAIN=local \
		go build -o $(CURDIR)/$@ .

$(BUILD)/go/tlsdemo-stripped: tests/go/tlsdemo/main.go tests/go/tlsdemo/go.mod
	@mkdir -p $(dir $@)
	cd tests/go/tlsdemo && GOCACHE=$(CURDIR)/$(BUILD)/go/cache GOFLAGS=-trimpath GOTOOLCHAIN=local \
		go build -ldflags="-s -w" -o $(CURDIR)/$@ .

# a gRPC server and client on grpc-go, Debian's (golang-google-grpc-dev: GOPATH mode, nothing downloaded)
$(BUILD)/go/grpcdemo: tests/go/grpcdemo/main.go
	@mkdir -p $(dir $@)
	cd tests/go/grpcdemo && GOCACHE=$(CURDIR)/$(BUILD)/go/cache GO111MODULE=off GOPATH=/usr/share/gocode \
		GOFLAGS=-trimpath GOTOOLCHAIN=local go build -o $(CURDIR)/$@ .

test-go: $(BUILD)/go/tlsdemo $(BUILD)/go/tlsdemo-stripped $(BUILD)/go/grpcdemo

run: setup
	$(BIN)/andon run

test: setup test-image test-go
	$(BIN)/pytest -q tests

test-unit: venv
	$(BIN)/pytest -q tests/unit

bench: setup test-go
	$(BIN)/python bench/run.py

clean:
	rm -rf $(BUILD)
