#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# no_xsave: in a QEMU VM whose CPU has no XSAVE (scripts/run-vm --no-xsave), Keel moves a
# DomU's FPU state with FXSAVE/FXRSTOR instead. Runs the domain tests that depend on it.
if grep -qw xsave /proc/cpuinfo; then
    echo "TAP version 13"; echo "1..1"
    echo "ok 1 no_xsave # SKIP this CPU has XSAVE (run under scripts/run-vm --no-xsave)"
    exit 0
fi
status=0
/selftests/domain_modes_test -t long_mode_sync_assert_done || status=1
/selftests/domain_vcpu_state_test -t fpu_state_is_per_vcpu || status=1
/selftests/domain_smp_test -t smp_lock_xadd || status=1
exit $status
