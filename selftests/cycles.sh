#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# cycles.sh N: N unload/load cycles of keel.ko under load (load_cycles in tap.sh), timed: one
# TAP line with the figures. Not part of run_all.sh: `scripts/test --cycles N` runs it in each
# emulator.
. /selftests/tap.sh
n=${1:-1000}
tap_plan 1
start=$(date +%s)
load_cycles "$n" >/tmp/cycles.out 2>&1; r=$?
secs=$(($(date +%s) - start))
ms=$((secs * 1000 / n))
if [ $r = 0 ]; then
    echo "ok 1 launch.load_cycles_under_load # $n cycles in $secs s, $ms ms per cycle"
else
    sed 's/^/# /' /tmp/cycles.out
    echo "not ok 1 launch.load_cycles_under_load # after $secs s"
fi
[ $r = 0 ]
