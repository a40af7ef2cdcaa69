# SPDX-License-Identifier: GPL-2.0
# TAP helpers for Keel's shell selftests (sourced). A test is a shell function:
#   return 0: ok;  return 4: skipped, its last output line is the reason;  else: not ok,
# and what it printed becomes TAP diagnostics ("# ...").
tap_n=0 tap_failed=0

tap_plan() { echo "TAP version 13"; echo "1..$1"; }

# check NAME FUNCTION [ARGS...]: runs one test.
check() {
    name=$1; shift
    "$@" >/tmp/check.out 2>&1; r=$?
    tap_n=$((tap_n + 1))
    if [ $r = 0 ]; then
        echo "ok $tap_n $name"
    elif [ $r = 4 ]; then
        echo "ok $tap_n $name # SKIP $(tail -n1 /tmp/check.out)"
    else
        sed 's/^/# /' /tmp/check.out
        echo "not ok $tap_n $name"
        tap_failed=$((tap_failed + 1))
    fi
}

# tap_done: the script's exit status.
tap_done() { [ $tap_failed = 0 ]; }

# guest NAME CMD: runs CMD in the shell on DomU NAME's console and prints its output (one
# line), waiting up to 60 s for it in /var/log/keel/NAME.log. Each answer is tagged; the tag is
# typed as "gN""=" so that the echo of the typed line never matches it. The count is in
# $dir/guest_n (the caller's scratch directory): guest runs in $(...).
guest() {
    _n=$(($(cat $dir/guest_n 2>/dev/null || echo 0) + 1)); echo $_n >$dir/guest_n; _tag=g$_n
    printf '%s\n\035' "echo \"$_tag\"\"=\$($2)\"" | keelctl console --timeout 10 $1 >/dev/null 2>&1
    _i=0
    until tr -d '\r' </var/log/keel/$1.log 2>/dev/null | grep -q "^$_tag="; do
        _i=$((_i + 1))
        [ $_i -lt 600 ] || { echo "no answer '$_tag=' from $1 after 60 s:" >&2; tail -n 40 /var/log/keel/$1.log >&2; return 1; }
        sleep 0.1
    done
    tr -d '\r' </var/log/keel/$1.log | sed -n "s/^$_tag=//p" | tail -n1
}

# load_keel [PARAMS...]: loads keel.ko with the options the test VM loaded it with at boot
# (/etc/keel.options, e.g. log_port) and PARAMS.
load_keel() { insmod /lib/modules/keel.ko $(cat /etc/keel.options 2>/dev/null) "$@"; }

# load_cycles N: N unload/load cycles of keel.ko while a CPU-bound loop and a fork/exec loop
# run on every CPU; after each load every CPU shows Keel's leaf, and at the end the kernel log
# has no warning. Progress every 100 cycles on stderr; fails naming the cycle that failed.
load_cycles() {
    dmesg -c >/dev/null
    _last=$(($(grep -c ^processor /proc/cpuinfo) - 1))
    _pids=
    for _cpu in $(seq 0 $_last); do
        taskset -c $_cpu sh -c 'while :; do :; done' & _pids="$_pids $!"
        taskset -c $_cpu sh -c 'while :; do /bin/true; done' & _pids="$_pids $!"
    done
    _i=0; _fail=
    while [ $_i -lt "$1" ]; do
        _i=$((_i + 1))
        rmmod keel || { _fail="rmmod failed in cycle $_i"; break; }
        load_keel || { _fail="insmod failed in cycle $_i"; break; }
        keel_cpuid >/dev/null || { _fail="leaf missing on a CPU in cycle $_i"; break; }
        [ $((_i % 100)) = 0 ] && echo "# cycle $_i" >&2
    done
    kill $_pids; wait $_pids 2>/dev/null
    grep -q '^keel ' /proc/modules || load_keel
    [ -z "$_fail" ] || { echo "$_fail"; return 1; }
    if dmesg | grep -E "WARNING|BUG|Oops|Call Trace|rcu.*stall"; then return 1; fi
}
