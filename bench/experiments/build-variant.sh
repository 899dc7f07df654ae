#!/bin/sh
# build-variant.sh NAME PATCH...
#
# Build andon's BPF objects from bpf/ with PATCH... applied, into
# build/bench/variant-NAME/bpf, for `bench/cost.py --variant NAME=<that dir>`: a candidate
# BPF change measured against the current objects in one interleaved run, without
# touching bpf/ or build/bpf. Prints the object directory.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
name=$1
shift
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r "$root/bpf" "$src/"
for p in "$@"; do
	patch -s -p1 -d "$src" < "$p"
done
out="$root/build/bench/variant-$name"
make -s -C "$src" -f "$root/Makefile" bpf BUILD="$out" >&2
echo "$out/bpf"
