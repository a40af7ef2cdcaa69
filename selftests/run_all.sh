#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs every Keel selftest in the test VM (the runner passes this as its script). Each test
# prints TAP; the host counts the results per emulator. Exits non-zero when any test failed.
#
# The C tests in name order, then the shell tests, except that the tests in $last run after
# the other C tests: their guests never exit by themselves, and a hypervisor that fails to
# take the CPU back from them wedges the machine, so everything before has reported by then.
# The fuzzers (fuzz_test.sh) run after every other test, for the same reason.
last="domain_lifecycle_test"
last_sh="fuzz_test.sh"
status=0
# run TEST: one suite, then the seconds it took (for sizing the suite to CI's time).
run() {
    [ -x "$1" ] || return 0
    echo "# selftest: ${1##*/}"
    t0=$(cut -d' ' -f1 /proc/uptime)
    "$1" || status=1
    echo "# took: ${1##*/} $(awk -v t0="$t0" '{ printf "%.0f", $1 - t0 }' /proc/uptime) s"
}
for t in /selftests/*_test; do
    case " $last " in *" ${t##*/} "*) continue ;; esac
    run "$t"
done
for t in $last; do run "/selftests/$t"; done
for t in /selftests/*_test.sh; do
    case " $last_sh " in *" ${t##*/} "*) continue ;; esac
    run "$t"
done
for t in $last_sh; do run "/selftests/$t"; done
exit $status
