#!/usr/bin/env bash
# Installs what andon needs on Debian 12 (bookworm) as root, and mounts the kernel
# filesystems it uses. Idempotent: a second run installs nothing and mounts nothing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "setup: run as root (apt-get and BPF need it)" >&2
	exit 3
fi

# build: BPF objects with clang, CO-RE headers from libbpf-dev, vmlinux.h from bpftool
# run:   libbpf1 (loaded by ctypes), python3 venv
# bench and tests: bpftrace and libbpf-tools (baselines), podman + runc + debootstrap
#        (container tests), iproute2 (network namespaces), curl
# detection tests: the real tools attackers and admins use (git for the benign workload,
#        netcat and an ssh client for the network rules)
# observability tests and benchmarks: real servers and clients on loopback (nginx, PostgreSQL,
#        MariaDB, Redis, dnsmasq; curl, psql, mysql, redis-cli, dig, openssl, node; Go, which
#        builds a Go HTTPS program with its own crypto/tls, and Debian's grpc-go for a Go gRPC
#        one; protoc, whose --decode_raw checks the gRPC body decoder) and load generators (wrk,
#        h2load from nghttp2-client; pgbench and redis-benchmark come with the server packages)
# network policy benchmark: iptables, the baseline andon's datapath is measured against
# profiles in benchmarks and docs/performance.md: perf (bench/cost.py --perf, perf record -a)
PKGS=(
	clang llvm libbpf-dev libbpf1 bpftool libelf-dev zlib1g-dev make gcc libc6-dev pkg-config
	python3 python3-venv python3-dev
	bpftrace libbpf-tools iproute2 curl procps
	podman runc debootstrap
	git netcat-traditional openssh-client
	nginx-light postgresql postgresql-contrib mariadb-server mariadb-client redis-server redis-tools
	dnsmasq-base bind9-dnsutils openssl wrk nghttp2-client nodejs golang-go golang-google-grpc-dev protobuf-compiler
	iptables linux-perf
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# The server packages would start their services on the default ports; andon's tests
	# start their own instances on chosen loopback ports, so keep the packaged ones down.
	policy=/usr/sbin/policy-rc.d
	had_policy=0; [ -e "$policy" ] && had_policy=1
	if [ "$had_policy" = 0 ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	if [ "$had_policy" = 0 ]; then rm -f "$policy"; fi
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then
	mount -t tracefs tracefs /sys/kernel/tracing || true
fi
if [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
	mount -t debugfs debugfs /sys/kernel/debug || true
fi

if [ ! -r /sys/kernel/btf/vmlinux ]; then
	echo "setup: this kernel has no BTF (/sys/kernel/btf/vmlinux); andon needs CONFIG_DEBUG_INFO_BTF=y" >&2
	exit 3
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: andon needs Python >= 3.11, found {sys.version.split()[0]}")
PY
