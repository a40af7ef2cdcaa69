#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# keelctl_run_test: `keelctl run` and `keelctl list` against the loaded module, in TAP. Runs in
# the test VM (busybox sh) as root with keel.ko loaded. The VM has no assembler: each guest is a
# few bytes of machine code written in hex below, with its assembly beside it.
. "$(dirname "$0")/tap.sh"
dir=/tmp/keelctl_run
out=$dir/out err=$dir/err
mkdir -p $dir

tap_plan 20

# hex B...: writes the bytes given as hex pairs.
hex() { for b in "$@"; do printf "\\$(printf %o "0x$b")"; done; }
# le VALUE WIDTH: writes VALUE as WIDTH little-endian bytes.
le() {
    n=$1 i=0
    while [ $i -lt "$2" ]; do hex "$(printf %02x $((n & 255)))"; n=$((n >> 8)); i=$((i + 1)); done
}

# Real mode at 0x7c00: mov al,'K'; out 0xe9,al; hlt
hex b0 4b e6 e9 f4 >$dir/real.bin
# prot32 at 0x100000: prints the string at 0x100012 on port 0xe9, then halts.
#   mov esi,0x100012; mov dx,0xe9; 1: lodsb; test al,al; jz 2f; out dx,al; jmp 1b; 2: hlt
{ hex be 12 00 10 00 66 ba e9 00 ac 84 c0 74 03 ee eb f8 f4; printf 'Hi from keel\n'; hex 00; } \
    >$dir/hello.bin
# prot32: reloads DS and SS from the GDT keelctl built and far-jumps through its code32 selector.
#   mov ax,0x18; mov ds,ax; mov ss,ax; jmp 0x10:0x10000f; mov al,'P'; out 0xe9,al; hlt
hex 66 b8 18 00 8e d8 8e d0 ea 0f 00 10 00 10 00 b0 50 e6 e9 f4 >$dir/segments.bin
# long64: far-returns to selector 0x08, then uses 64-bit registers (in 32-bit mode 0x48 is
# `dec eax` and the output differs), stores at 15 MiB through the page tables, pushes and pops.
#   mov ax,0x18; mov ds,ax; mov ss,ax; push 0x08; push 0x100011; retfq
#   mov rax,0x4142434445464748; shr rax,56; out 0xe9,al; mov [0xf00000],rax; push rax; pop rax; hlt
hex 66 b8 18 00 8e d8 8e d0 6a 08 68 11 00 10 00 48 cb \
    48 b8 48 47 46 45 44 43 42 41 48 c1 e8 38 e6 e9 48 89 04 25 00 00 f0 00 50 58 f4 >$dir/long.bin
# in al,0x60; out 0xe9,al; hlt
hex e4 60 e6 e9 f4 >$dir/in.bin
# mov al,[0x40000000] (1 GiB: outside a 16 MiB guest); hlt
hex a0 00 00 00 40 f4 >$dir/fault.bin
# int3 with no IDT: #GP, #DF, triple fault
hex cc >$dir/int3.bin
# 1: out 0x80,al; jmp 1b
hex e6 80 eb fc >$dir/chatty.bin
# 1: jmp 1b
hex eb fe >$dir/spin.bin

# A 32-bit ELF: one PT_LOAD of 5 bytes at 1 MiB (file offset 84); mov al,'E'; out 0xe9,al; hlt
{
    hex 7f 45 4c 46 01 01 01 00 00 00 00 00 00 00 00 00   # ELFCLASS32, LSB, EV_CURRENT
    le 2 2; le 3 2; le 1 4                                # ET_EXEC, EM_386, version
    le 0x100000 4; le 52 4; le 0 4; le 0 4                # entry, phoff, shoff, flags
    le 52 2; le 32 2; le 1 2; le 0 2; le 0 2; le 0 2      # ehsize, phentsize, phnum, sh*
    le 1 4; le 84 4; le 0x100000 4; le 0x100000 4         # PT_LOAD, offset, vaddr, paddr
    le 5 4; le 5 4; le 5 4; le 0x1000 4                   # filesz, memsz, R|X, align
    hex b0 45 e6 e9 f4
} >$dir/e32.elf
# A 64-bit ELF: one PT_LOAD of 17 bytes at 2 MiB (file offset 120), long mode by its class:
#   mov rax,0x4c00000000000000; shr rax,56; out 0xe9,al; hlt
{
    hex 7f 45 4c 46 02 01 01 00 00 00 00 00 00 00 00 00   # ELFCLASS64, LSB, EV_CURRENT
    le 2 2; le 62 2; le 1 4                               # ET_EXEC, EM_X86_64, version
    le 0x200000 8; le 64 8; le 0 8; le 0 4                # entry, phoff, shoff, flags
    le 64 2; le 56 2; le 1 2; le 0 2; le 0 2; le 0 2      # ehsize, phentsize, phnum, sh*
    le 1 4; le 5 4; le 120 8; le 0x200000 8; le 0x200000 8 # PT_LOAD, R|X, offset, vaddr, paddr
    le 17 8; le 17 8; le 0x1000 8                         # filesz, memsz, align
    hex 48 b8 00 00 00 00 00 00 00 4c 48 c1 e8 38 e6 e9 f4
} >$dir/e64.elf

is_intel() { grep -q GenuineIntel /proc/cpuinfo; }

# run_ok ARGS...: keelctl run succeeds (the guest halted). A guest that hangs fails the test
# after a minute instead of stalling the whole run.
run_ok() { keelctl run --timeout 60 "$@" >$out 2>$err || { cat $out $err; return 1; }; }
# run_fails ARGS...: keelctl run fails.
run_fails() {
    ! keelctl run --timeout 60 "$@" >$out 2>$err || { echo "keelctl run $* succeeded"; cat $out; return 1; }
}
# has FILE TEXT: FILE has a line containing TEXT (fixed string).
has() { grep -qF -- "$2" "$1" || { echo "no '$2' in:"; cat "$1"; return 1; }; }

real_mode() {
    keelctl info --json >$out 2>$err || { cat $err; return 1; }
    if ! grep -q '"unrestricted_guest"' $out; then
        echo "no unrestricted guest: Keel cannot run real mode here"; return 4
    fi
    run_ok --mode real $dir/real.bin || return 1
    has $out "exit 1: io out port 0xe9 size 1 data 0x4b" && has $out "exit 2: hlt rip" \
        && has $out "console: K" && has $out "stopped: halted after 2 exits"
}
check keelctl_run.real_mode_console real_mode

prot32_console() {
    run_ok --mode prot32 $dir/hello.bin || return 1
    has $out "console: Hi from keel" && has $out "exit 1: io out port 0xe9 size 1 data 0x48" \
        && has $out "stopped: halted after 14 exits"
}
check keelctl_run.prot32_console prot32_console

prot32_segments() { run_ok $dir/segments.bin && has $out "console: P"; }
check keelctl_run.prot32_gdt_segments prot32_segments

long64() {
    run_ok --mode long64 $dir/long.bin || return 1
    has $out "long64 mode" && has $out "io out port 0xe9 size 1 data 0x41" && has $out "console: A" \
        && has $out "stopped: halted after 2 exits"
}
check keelctl_run.long64_paging_and_gdt long64

elf32() { run_ok $dir/e32.elf && has $out "elf32 image" && has $out "prot32 mode" && has $out "console: E"; }
check keelctl_run.elf32_defaults_to_prot32 elf32

elf64() {
    run_ok $dir/e64.elf && has $out "elf64 image" && has $out "long64 mode" \
        && has $out "entry 0x200000" && has $out "console: L"
}
check keelctl_run.elf64_defaults_to_long64 elf64

in_reads_ones() {
    run_ok $dir/in.bin && has $out "io in port 0x60 size 1 answered 0xff" \
        && has $out "io out port 0xe9 size 1 data 0xff"
}
check keelctl_run.in_reads_all_ones in_reads_ones

# A hypercall Keel does not handle reaches keelctl, which answers -ENOSYS: the guest reads -38
# back in rax (al = 0xda). The vendor's own instruction:
#   mov eax,0x7fff; vmcall (Intel) / vmmcall (AMD); out 0xe9,al; hlt
hypercall() {
    if is_intel; then call="0f 01 c1"; else call="0f 01 d9"; fi
    # shellcheck disable=SC2086
    hex b8 ff 7f 00 00 $call e6 e9 f4 >$dir/hypercall.bin
    run_ok --mode long64 $dir/hypercall.bin || return 1
    has $out "hypercall nr 0x7fff" && has $out "answered -38 (ENOSYS)" \
        && has $out "io out port 0xe9 size 1 data 0xda"
}
check keelctl_run.hypercall_enosys hypercall

memory_fault() {
    run_fails $dir/fault.bin || return 1
    has $out "stopped: memory fault at 0x40000000 (read)" && has $err "did not halt"
}
check keelctl_run.memory_fault_stops memory_fault

triple_fault() { run_fails $dir/int3.bin && has $out "stopped: shutdown (triple fault)"; }
check keelctl_run.triple_fault_stops triple_fault

max_exits() {
    run_fails --max-exits 5 $dir/chatty.bin || return 1
    has $out "stopped: max-exits limit of 5 reached after 5 exits" \
        && [ "$(grep -c '^exit [0-9]*: io out port 0x80' $out)" = 5 ] || { cat $out; return 1; }
}
check keelctl_run.max_exits max_exits

spin_timeout() {
    start=$(date +%s)
    ! keelctl run --timeout 1 $dir/spin.bin >$out 2>$err || { echo "a spinning guest halted"; return 1; }
    took=$(($(date +%s) - start))
    has $out "stopped: timeout of 1 s reached" && has $err "timeout" || return 1
    [ $took -le 10 ] || { echo "a 1 s timeout took ${took} s"; return 1; }
}
check keelctl_run.timeout_ends_a_spinning_guest spin_timeout

run_json() {
    run_ok --json $dir/hello.bin || return 1
    has $out '"halted": true' && has $out '"console": "Hi from keel\n"' \
        && has $out '"kind": "io_out"' && has $out '"reason": "halted"'
}
check keelctl_run.json run_json

# While a guest spins, `keelctl list` shows its domain; once keelctl is gone, so is the domain.
bg_pid=
list_while_running() {
    keelctl run --name keeltest-spin --memory 4M --timeout 60 $dir/spin.bin >$dir/bg.out 2>&1 &
    bg_pid=$!
    i=0
    while [ $i -lt 50 ]; do
        keelctl list >$out 2>$err || { cat $err; return 1; }
        grep -q keeltest-spin $out && grep keeltest-spin $out | grep -q 'r-----' && break
        sleep 0.1; i=$((i + 1))
    done
    line=$(grep keeltest-spin $out) || { echo "no domain keeltest-spin in:"; cat $out $dir/bg.out; return 1; }
    set -- $line
    # Name ID Mem VCPUs State Time(s), as xl list
    [ "$3 $4 $5" = "4 1 r-----" ] || { echo "unexpected: $line"; cat $out; return 1; }
    keelctl list --json >$out || return 1
    has $out '"name": "keeltest-spin"' && has $out '"state": "running"'
}
check keelctl_list.shows_a_running_domain list_while_running

list_after() {
    [ -n "$bg_pid" ] && { kill "$bg_pid" 2>/dev/null; wait "$bg_pid" 2>/dev/null; }
    i=0
    while :; do
        keelctl list >$out 2>$err || { cat $err; return 1; }
        grep -q keeltest-spin $out || return 0
        i=$((i + 1)); [ $i -lt 20 ] || { echo "keeltest-spin outlived its keelctl:"; cat $out; return 1; }
        sleep 0.1
    done
}
check keelctl_list.domain_gone_after_keelctl list_after

missing_file() { run_fails $dir/does-not-exist.bin && has $err "cannot read the image"; }
check keelctl_run.missing_image_fails missing_file

memory_zero() { run_fails --memory 0 $dir/real.bin && has $err "must not be zero"; }
check keelctl_run.memory_zero_fails memory_zero

too_big() {
    dd if=/dev/zero of=$dir/big.bin bs=1024 count=8 2>/dev/null
    run_fails --memory 4K $dir/big.bin && has $err "larger than the guest's RAM"
}
check keelctl_run.image_larger_than_ram_fails too_big

not_fitting() { run_fails --memory 1M $dir/hello.bin && has $err "does not fit at 0x100000"; }
check keelctl_run.image_not_fitting_at_load_fails not_fitting

help_text() {
    keelctl run --help >$out 2>&1 || return 1
    has $out "--timeout" && has $out "--max-exits" && has $out "0xe9" && has $out "long64"
}
check keelctl_run.help help_text

tap_done
