#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# leak_check.sh: every selftest under the debug kernel (KASAN, kmemleak, lockdep), then keel.ko
# unloaded and a kmemleak scan. TAP. The runner passes this as its script (scripts/test, part
# "debug"); it runs as root with keel.ko loaded.
#
# Passes when every selftest passes, kmemleak finds no object that became unreferenced while
# the tests ran (those from boot are cleared first), and the kernel printed no KASAN report
# ("BUG: KASAN: ..."), lockdep splat, BUG, WARNING or Oops. The selftests include the 50
# load/unload cycles under load, CPU hotplug and 100 domain create/destroy cycles.
. /selftests/tap.sh
km=/sys/kernel/debug/kmemleak

[ -d /sys/kernel/debug/keel ] || mount -t debugfs none /sys/kernel/debug
# The tests run `dmesg -c`, which hides earlier messages from dmesg; a reader of /dev/kmsg
# keeps its own place, so it sees every message.
cat /dev/kmsg >/tmp/kmsg.log &
kmsg_reader=$!
if [ -w $km ]; then
    # Objects that look leaked before the tests (from boot) are not Keel's: forget them.
    echo scan >$km
    echo clear >$km
fi

# The selftests, each printing its own TAP.
/selftests/run_all.sh; status=$?

echo "# selftest: debug_checks"
tap_plan 2
no_leak_after_rmmod() {
    [ -w $km ] || { echo "no $km (kernel without kmemleak?)"; return 1; }
    if grep -q '^keel ' /proc/modules; then rmmod keel || return 1; fi
    # kmemleak reports an object only once it is older than 5 s and was unreferenced in a
    # scan; two scans after that settle it.
    sleep 6
    echo scan >$km
    echo scan >$km
    n=$(grep -c '^unreferenced object' $km)
    [ "$n" = 0 ] || { head -n 60 $km; echo "$n objects leaked"; return 1; }
}
check debug.no_leak_after_rmmod no_leak_after_rmmod

no_kernel_warnings() {
    sleep 1
    kill $kmsg_reader 2>/dev/null
    if grep -E 'BUG:|WARNING:|Oops|possible recursive locking|possible circular locking|inconsistent lock state|suspicious RCU usage|kmemleak: [0-9]+ new suspected' /tmp/kmsg.log >/tmp/bad.log; then
        head -n 40 /tmp/bad.log
        return 1
    fi
}
check debug.no_kernel_warnings no_kernel_warnings
tap_done && [ $status = 0 ]
