#!/usr/bin/env bash
# Rebuild pyaxvisor's x86 test kernel from entry.S, kernel.c and kernel.ld with
# Debian's gcc and binutils (no multilib needed: gcc only compiles, with -m32 -c).
#   smp.elf  Multiboot ELF32 (header flags 0x00000002)
#   smp.bin  flat binary for 0x100000 whose Multiboot header has the a.out kludge
#            (flags 0x00010002); it also runs raw, entered at its first byte
# Usage: build.sh [OUTDIR]   (default: this directory, where the images are committed)
# The output is deterministic (no build id, no timestamps, no paths): building twice,
# or into another directory, gives the same bytes. The committed images were built
# with gcc 12.2.0 (Debian 12.2.0-14+deb12u1) and GNU binutils 2.40 (Debian 12).
set -euo pipefail
src=$(cd "$(dirname "$0")" && pwd)
out=${1:-$src}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$src"   # relative source names: nothing of the build path ends up in the images
export LC_ALL=C SOURCE_DATE_EPOCH=0
CFLAGS=(-m32 -march=i686 -mtune=generic -mgeneral-regs-only -ffreestanding -fno-pic
        -fno-pie -fno-stack-protector -nostdlib -O2 -fno-asynchronous-unwind-tables
        -fno-tree-loop-distribute-patterns -fcf-protection=none -Wall -Wextra -Werror)
LDFLAGS=(-m elf_i386 --build-id=none -z noexecstack --no-warn-rwx-segments -T kernel.ld)
gcc "${CFLAGS[@]}" -c -o "$tmp/kernel.o" kernel.c
as --32 -o "$tmp/entry-elf.o" entry.S
as --32 --defsym AOUT_KLUDGE=1 -o "$tmp/entry-bin.o" entry.S
ld "${LDFLAGS[@]}" -o "$tmp/smp.elf" "$tmp/entry-elf.o" "$tmp/kernel.o"
ld "${LDFLAGS[@]}" -o "$tmp/smp-bin.elf" "$tmp/entry-bin.o" "$tmp/kernel.o"
objcopy -O binary "$tmp/smp-bin.elf" "$tmp/smp.bin"
cp "$tmp/smp.elf" "$tmp/smp.bin" "$out/"
echo "built $out/smp.elf ($(stat -c %s "$out/smp.elf") bytes)," \
     "$out/smp.bin ($(stat -c %s "$out/smp.bin") bytes)"
