#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# keelctl_test: the keelctl tool against the loaded module, in TAP. Runs in the test VM (busybox
# sh) as root with keel.ko loaded; unloads and reloads the module once.
. "$(dirname "$0")/tap.sh"
out=/tmp/keelctl.out err=/tmp/keelctl.err

tap_plan 9

# Keel hides vmx/svm from /proc/cpuinfo while loaded: the vendor says which one it is.
expected_vendor() { if grep -q GenuineIntel /proc/cpuinfo; then echo vmx; else echo svm; fi; }

info_human() {
    keelctl info >$out 2>$err || { cat $err; return 1; }
    grep -q "^vendor" $out && grep -q "^online cpus *$(grep -c ^processor /proc/cpuinfo)\$" $out || { cat $out; return 1; }
}
check keelctl.info_human info_human

info_json() {
    keelctl info --json >$out 2>$err || { cat $err; return 1; }
    grep -q "\"vendor\": \"$(expected_vendor)\"" $out && grep -q "\"online_cpus\": $(grep -c ^processor /proc/cpuinfo)," $out \
        && grep -q '"abi_version": 3,' $out || { cat $out; return 1; }
}
check keelctl.info_json info_json

help_text() { keelctl --help >$out 2>&1 && grep -q "info" $out && keelctl info --help >$out 2>&1 && grep -q -- "--json" $out; }
check keelctl.help help_text

bad_usage() { ! keelctl frobnicate >$out 2>&1 && grep -q "unrecognized subcommand" $out; }
check keelctl.bad_usage_fails bad_usage

non_root() {
    ! su -s /bin/sh nobody -c "keelctl info" >$out 2>$err \
        && grep -q "permission denied" $err && grep -q "root" $err || { cat $err; return 1; }
}
check keelctl.non_root_refused non_root

not_loaded() {
    rmmod keel || return 1
    ! keelctl info >$out 2>$err; r=$?
    load_keel || { echo "# reloading keel.ko failed"; return 1; }
    [ $r = 0 ] && grep -q "not loaded" $err || { cat $err; return 1; }
}
check keelctl.module_not_loaded not_loaded

other_device() { ! keelctl --device /dev/null info >$out 2>$err && grep -q "KEEL_GET_VERSION failed" $err || { cat $err; return 1; }; }
check keelctl.wrong_device other_device

# The exit counters: CPUID exits on every CPU make the cpuid row's total grow.
cpuid_total() { keelctl stats | awk '$1 == "cpuid" { print $NF }'; }
stats_move() {
    before=$(cpuid_total)
    [ -n "$before" ] || { keelctl stats; echo "no cpuid row"; return 1; }
    for i in 1 2 3 4 5; do keel_cpuid >/dev/null; done
    after=$(cpuid_total)
    [ "$after" -gt "$before" ] || { echo "cpuid total $before -> $after"; return 1; }
    keelctl stats | head -1 | grep -q "cpu0" || { keelctl stats; return 1; }
    keelctl stats --json | grep -q '"cpus"' || return 1
}
check keelctl.stats_move stats_move

stats_missing_file() {
    keelctl stats --file /nonexistent 2>/tmp/err && return 1
    grep -q "debugfs" /tmp/err || { cat /tmp/err; return 1; }
}
check keelctl.stats_missing_file stats_missing_file

tap_done
