#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# keel_load_test: loading and unloading keel.ko, and its refusal to load while KVM holds the
# CPU's virtualization extension. TAP. Runs in the test VM as root with keel.ko loaded, and
# leaves it loaded.
. "$(dirname "$0")/tap.sh"

tap_plan 3

loaded() { grep -q '^keel ' /proc/modules; }

reload_cycles() {
    for i in 1 2 3 4 5; do
        rmmod keel || { echo "rmmod failed in cycle $i"; return 1; }
        ! loaded && [ ! -e /dev/keel ] || { echo "keel still present after rmmod (cycle $i)"; return 1; }
        load_keel || { echo "insmod failed in cycle $i"; return 1; }
        [ -c /dev/keel ] || { echo "/dev/keel missing after insmod (cycle $i)"; return 1; }
    done
    keelctl info >/dev/null
}
check load.reload_cycles reload_cycles

# KVM takes VMX/SVM when it loads; Keel must then refuse with EBUSY and say why.
refused_while_kvm_loaded() {
    if grep -q GenuineIntel /proc/cpuinfo; then kvm=kvm_intel; else kvm=kvm_amd; fi
    rmmod keel || return 1
    if ! modprobe $kvm 2>/tmp/kvm.err; then
        load_keel
        echo "$kvm does not load on this CPU: $(cat /tmp/kvm.err)"
        return 4
    fi
    dmesg -c >/dev/null
    load_keel 2>/tmp/insmod.err; r=$?
    msg=$(dmesg | grep 'keel:')
    modprobe -r $kvm
    load_keel || { echo "insmod after unloading $kvm failed"; return 1; }
    [ $r != 0 ] || { echo "keel loaded while $kvm was loaded"; return 1; }
    grep -q "Device or resource busy" /tmp/insmod.err || { echo "insmod's error is not EBUSY: $(cat /tmp/insmod.err)"; return 1; }
    echo "$msg" | grep -q "already in use" || { echo "no clear log line; keel said: $msg"; return 1; }
}
check load.refused_while_kvm_loaded refused_while_kvm_loaded

# The log line at load names the extension.
load_log_line() {
    dmesg -c >/dev/null
    rmmod keel && load_keel || return 1
    dmesg | grep -qE "keel: (VMX|SVM) usable" || { dmesg | grep keel; return 1; }
}
check load.logs_what_it_found load_log_line

loaded || load_keel
tap_done
