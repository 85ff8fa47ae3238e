#!/usr/bin/env bash
# Rebuild the bundled guest images from their sources with Debian's cross binutils
# (package binutils-aarch64-linux-gnu). The .bin files are committed so that
# `pyaxvisor run` works without a cross toolchain; this script reproduces them.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# hello: linked at 0x40080000 (RAM base + 512 KiB, where the VM loads raw kernels)
aarch64-linux-gnu-as -o "$tmp/hello.o" aarch64/hello.S
aarch64-linux-gnu-ld -e 0x40080000 -Ttext=0x40080000 -o "$tmp/hello.elf" "$tmp/hello.o"
aarch64-linux-gnu-objcopy -O binary "$tmp/hello.elf" aarch64/hello.bin
echo "built aarch64/hello.bin ($(stat -c %s aarch64/hello.bin) bytes)"
