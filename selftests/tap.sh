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

# load_keel [PARAMS...]: loads keel.ko with the options the test VM loaded it with at boot
# (/etc/keel.options, e.g. log_port) and PARAMS.
load_keel() { insmod /lib/modules/keel.ko $(cat /etc/keel.options 2>/dev/null) "$@"; }
