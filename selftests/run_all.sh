#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs every Keel selftest in the test VM (the runner passes this as its script). Each test
# prints TAP; the host counts the results per emulator. Exits non-zero when any test failed.
status=0
for t in /selftests/*_test /selftests/*_test.sh; do
    [ -x "$t" ] || continue
    echo "# selftest: ${t##*/}"
    "$t" || status=1
done
exit $status
