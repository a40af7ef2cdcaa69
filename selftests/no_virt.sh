#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# no_virt: in a VM whose CPU has neither VMX nor SVM (scripts/run-vm --no-virt), keel.ko must
# refuse to load with ENODEV and a log line that says why. TAP.
echo "TAP version 13"
echo "1..1"
dmesg -c >/dev/null
if insmod /lib/modules/keel.ko 2>/tmp/insmod.err; then
    echo "# keel.ko loaded on a CPU without VMX or SVM"
    echo "not ok 1 load.refused_without_vmx_or_svm"; exit 1
fi
if grep -q "No such device" /tmp/insmod.err && dmesg | grep -q "keel: .*neither Intel VMX nor AMD SVM"; then
    echo "ok 1 load.refused_without_vmx_or_svm"
else
    sed 's/^/# /' /tmp/insmod.err; dmesg | grep keel | sed 's/^/# /'
    echo "not ok 1 load.refused_without_vmx_or_svm"; exit 1
fi
