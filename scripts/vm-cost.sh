#!/bin/sh
# Sourced by the benchmarks' scripts inside the test VM (run-vm -f puts it in /keel/): what a
# stretch of work cost Keel's side of the machine.
#
# snap FILE: keel-domd's threads' run time (ns, by name: schedstat; a vCPU thread's includes
#   the time its DomU ran), Dom0's exits to Keel and the DomUs' exits (debugfs), into FILE.
# cost TAG BEFORE AFTER: one line, TAG: what changed between two snaps.
# mark clear|dump: with $profile=1, the marker of scripts/qemu-plugins/insn_profile.c (run-vm -f
#   puts keel_mark in /keel/): clears the instruction counts, or writes and clears them.
mark() { [ "${profile:-0}" = 0 ] || /keel/keel_mark "$1"; }
# profile_addresses: with $profile=1, where keel.ko's text and keel-domd are (the report names
#   their functions from them); call it while keel-domd runs.
profile_addresses() {
    [ "${profile:-0}" != 0 ] || return 0
    echo "profile keel.ko text $(cat /sys/module/keel/sections/.text)"
    echo "profile keel-domd base $(grep -m1 ' 00000000 .*keel-domd' /proc/$(pidof keel-domd | cut -d' ' -f1)/maps | cut -d- -f1)"
}
snap() {
    {
        for p in $(pidof keel-domd); do
            for t in /proc/"$p"/task/*; do
                echo "thread $(cat "$t"/comm) $(cut -d' ' -f1 "$t"/schedstat)"
            done
        done
        grep -v '^#' /sys/kernel/debug/keel/stats 2>/dev/null | sed 's/^/exit /'
        grep -v '^#' /sys/kernel/debug/keel/domain_exits 2>/dev/null | sed 's/^/dexit /'
    } >"$1"
}
cost() {
    awk -v tag="$1" '
    FNR == 1 { f++ }
    $1 == "thread" { t[f, $2] += $3; names[$2] = 1 }
    $1 == "exit" { x[f, $3] += $4; kinds[$3] = 1 }
    $1 == "dexit" { d[f, $3] += $4; dkinds[$3] = 1 }
    END {
        printf "%s:", tag
        s = ""; for (n in names) s = s sprintf(" %s=%.1fms", n, (t[2, n] - t[1, n]) / 1e6)
        if (s != "") printf " keel-domd threads ran%s |", s
        s = ""; for (k in kinds) if (x[2, k] - x[1, k] > 0) s = s sprintf(" %s=%d", k, x[2, k] - x[1, k])
        printf " Dom0 exits to Keel:%s |", (s == "" ? " none" : s)
        s = ""; for (k in dkinds) if (d[2, k] - d[1, k] > 0) s = s sprintf(" %s=%d", k, d[2, k] - d[1, k])
        printf " DomU exits:%s\n", (s == "" ? " none" : s) }' "$2" "$3"
}
