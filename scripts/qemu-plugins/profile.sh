# Sourced by the benchmarks (bash, after lib.sh) for --profile: the plugin and marker of
# scripts/qemu-plugins/insn_profile.c, and the reports of its dumps.
#
# profile_setup WORK: builds the plugin and keel_mark into WORK, adds the plugin to
#   $KEEL_QEMU_ARGS (its dumps: WORK/profile.K) and sets profile_files to run-vm's -f for
#   keel_mark (the VM's script then calls `mark clear` / `mark dump` of vm-cost.sh, and
#   prints `profile keel.ko text ADDR` and `profile keel-domd base ADDR`).
# profile_report WORK LOG K TITLE: prints where dump K's instructions went, with the symbols
#   of the kernel, keel.ko and keel-domd (addresses from LOG, the VM's serial log); Dom0's
#   kernel is told from the DomU's by dump 0, which must be of a stretch with Dom0 alone.
profile_files=()
profile_setup() {
    gcc -O2 -Wall -shared -fPIC -fvisibility=hidden -o "$1/insn_profile.so" "$KEEL_ROOT/scripts/qemu-plugins/insn_profile.c"
    gcc -O2 -Wall -static -o "$1/keel_mark" "$KEEL_ROOT/scripts/qemu-plugins/keel_mark.c"
    export KEEL_QEMU_ARGS="${KEEL_QEMU_ARGS:-} -plugin $1/insn_profile.so,out=$1/profile"
    profile_files=(-f "$1/keel_mark")
}
profile_report() {
    local text domd
    text=$(tr -d '\r' <"$2" | sed -n 's/^profile keel.ko text \(0x[0-9a-f]*\).*/\1/p')
    domd=$(tr -d '\r' <"$2" | sed -n 's/^profile keel-domd base \([0-9a-f]*\).*/\1/p')
    echo; echo "== where $4 went (every CPU's instructions from its start to its end)"
    "$KEEL_ROOT/scripts/qemu-plugins/profile-report" "$1/profile.$3" --dom0 "$1/profile.0" \
        --system-map "$KEEL_CACHE/kernel/keel/build/System.map" \
        ${text:+--module "$KEEL_ROOT/module/keel.ko" --module-text "$text"} \
        ${domd:+--program "keel-domd=$KEEL_ROOT/target/x86_64-unknown-linux-gnu/release/keel-domd@$domd"}
}
