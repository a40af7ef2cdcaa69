#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# keel_launch_test.sh: Keel beneath Linux across loads, unloads, CPU hotplug, KVM, a failed
# launch and a loaded machine. TAP. Runs in the test VM as root with keel.ko loaded, and
# leaves it loaded.
. "$(dirname "$0")/tap.sh"
last_cpu=$(($(grep -c ^processor /proc/cpuinfo) - 1))

tap_plan 8

loaded() { grep -q '^keel ' /proc/modules; }
ensure_loaded() { loaded || load_keel; }
if grep -q GenuineIntel /proc/cpuinfo; then kvm=kvm_intel flag=vmx; else kvm=kvm_amd flag=svm; fi

# The Keel leaf is on every CPU while loaded, on none after rmmod; Linux's flag comes back.
leaf_follows_the_module() {
    keel_cpuid >/tmp/cpuid.out || { cat /tmp/cpuid.out; echo "leaf not on every CPU while loaded"; return 1; }
    rmmod keel || return 1
    keel_cpuid >/tmp/cpuid.out; r=$?
    grep -qw $flag /proc/cpuinfo; flag_back=$?
    load_keel || return 1
    [ $r = 1 ] || { cat /tmp/cpuid.out; echo "leaf still visible after rmmod (status $r)"; return 1; }
    [ $flag_back = 0 ] || { echo "'$flag' missing from /proc/cpuinfo after rmmod"; return 1; }
    keel_cpuid >/tmp/cpuid.out || { cat /tmp/cpuid.out; echo "leaf missing after insmod"; return 1; }
}
check launch.leaf_follows_the_module leaf_follows_the_module

# While Keel owns VMX/SVM, KVM must refuse to load, cleanly, and Keel keeps running.
kvm_refused_while_loaded() {
    dmesg -c >/dev/null
    if modprobe $kvm 2>/tmp/kvm.err; then
        modprobe -r $kvm
        echo "$kvm loaded while Keel runs"
        return 1
    fi
    grep -q "not supported" /tmp/kvm.err || { echo "modprobe's error: $(cat /tmp/kvm.err)"; return 1; }
    ! dmesg | grep -qE "WARNING|BUG|Oops" || { dmesg; return 1; }
    keel_cpuid >/dev/null || { echo "Keel gone after $kvm's attempt"; return 1; }
}
check launch.kvm_refused_while_loaded kvm_refused_while_loaded

# A CPU that fails to launch makes insmod fail, with every CPU handed back and a log line.
failed_launch_rolls_back() {
    rmmod keel || return 1
    dmesg -c >/dev/null
    load_keel fail_launch_cpu=$last_cpu 2>/tmp/insmod.err; r=$?
    keel_cpuid >/tmp/cpuid.out; leaf=$?
    loaded; still=$?
    msg=$(dmesg | grep 'keel:')
    load_keel || { echo "insmod after the failed one failed"; return 1; }
    [ $r != 0 ] || { echo "insmod succeeded with a failing CPU"; return 1; }
    grep -q "Input/output error" /tmp/insmod.err || { echo "insmod's error: $(cat /tmp/insmod.err)"; return 1; }
    [ $leaf = 1 ] || { cat /tmp/cpuid.out; echo "some CPU still runs on Keel"; return 1; }
    [ $still != 0 ] || { echo "module still listed"; return 1; }
    echo "$msg" | grep -q "CPU $last_cpu: .* launch failed" || { echo "no log line naming CPU $last_cpu: $msg"; return 1; }
    echo "$msg" | grep -q "every CPU was handed back" || { echo "no rollback line: $msg"; return 1; }
}
check launch.failed_launch_rolls_back failed_launch_rolls_back

# Dom0 traffic over a veth pair between two network namespaces while launched.
veth_traffic() {
    unshare -n sleep 600 & ns=$!
    sleep 0.2
    # Busybox's ip names the peer itself (vethN): find it and rename it.
    ip link add kv0 type veth || { kill $ns; echo "cannot create a veth pair"; return 1; }
    peer=$(ip link show kv0 | sed -n 's/.*kv0@\([^:]*\):.*/\1/p')
    ip link set "$peer" name kv1 && ip link set kv1 netns $ns ||
        { kill $ns; ip link del kv0; echo "cannot move the peer '$peer' into a namespace"; return 1; }
    ip addr add 10.77.0.1/24 dev kv0 && ip link set kv0 up
    nsenter -t $ns -n sh -c 'ip addr add 10.77.0.2/24 dev kv1 && ip link set kv1 up && ip link set lo up'
    mkdir -p /tmp/www
    dd if=/dev/urandom of=/tmp/www/data bs=1k count=4096 2>/dev/null
    nsenter -t $ns -n httpd -f -p 10.77.0.2:8080 -h /tmp/www & srv=$!
    sleep 0.5
    wget -q -O /tmp/veth.recv http://10.77.0.2:8080/data; w=$?
    kill $srv
    ping -c 3 -W 2 10.77.0.2 >/tmp/ping.out; p=$?
    kill $ns; ip link del kv0 2>/dev/null
    [ $p = 0 ] || { cat /tmp/ping.out; return 1; }
    [ $w = 0 ] || { echo "wget over the veth pair failed"; return 1; }
    [ "$(md5sum </tmp/www/data)" = "$(md5sum </tmp/veth.recv)" ] ||
        { echo "received $(wc -c </tmp/veth.recv) bytes, not the 4 MiB sent"; return 1; }
}
check launch.veth_traffic veth_traffic

# 50 unload/load cycles under load (load_cycles in tap.sh; `scripts/test --cycles N` runs more).
cycles_under_load() { load_cycles 50; }
check launch.cycles_under_load cycles_under_load

# NMIs reach Dom0 while Keel runs, also those that arrive while a CPU is in root mode (busy
# with exits from a CPUID loop): every CPU answers each NMI backtrace request (sysrq 'l'). A
# lost NMI shows as a missing "NMI backtrace for cpu N" line.
nmis_reach_dom0() {
    pids=
    for cpu in $(seq 0 $last_cpu); do
        taskset -c $cpu sh -c 'while :; do keel_cpuid >/dev/null; done' & pids="$pids $!"
    done
    sleep 0.5
    dmesg -c >/dev/null
    dmesg -n 1  # the backtraces go to the log, not the console (until the restore below)
    n=10
    for i in $(seq $n); do echo l >/proc/sysrq-trigger; done
    sleep 2     # the console thread skips the backlog while the level is low
    dmesg -n 5
    kill $pids; wait $pids 2>/dev/null
    dmesg >/tmp/nmi.log
    for cpu in $(seq 0 $last_cpu); do
        got=$(grep -c "NMI backtrace for cpu $cpu" /tmp/nmi.log)
        [ "$got" = $n ] || { echo "CPU $cpu answered $got of $n NMIs"; grep -i nmi /tmp/nmi.log | head; return 1; }
    done
}
check launch.nmis_reach_dom0 nmis_reach_dom0

# An NMI that arrives while a CPU is in root mode is Dom0's: root mode keeps it (SVM: GIF is
# clear; VMX: root mode's own NMI gate records it) and Dom0 takes it when it runs again. CPU 0
# spins in root mode for a second (debugfs root_spin, testing only) while another CPU keeps
# asking for a backtrace of every CPU by NMI; on VMX the root-mode NMI counter must move.
nmi_in_root_mode_reaches_dom0() {
    [ $last_cpu -ge 1 ] || { echo "needs 2 CPUs"; return 4; }
    knob=/sys/kernel/debug/keel/root_spin stats=/sys/kernel/debug/keel/stats
    [ -e $knob ] || { echo "no $knob"; return 1; }
    nmis() { awk '$1 == 0 && $2 == "nmi" {print $3}' $stats; }
    before=$(nmis)
    dmesg -c >/dev/null
    dmesg -n 1
    # Backtrace requests every 0.1 s from the last CPU for as long as CPU 0 spins, so that
    # one lands inside the spin however the emulator paces processes and the TSC; up to 5
    # spins until root mode has counted one (VMX), one spin on SVM.
    tries=0
    while :; do
        tries=$((tries + 1))
        rm -f /tmp/spin.done
        taskset -c $last_cpu sh -c 'while [ ! -e /tmp/spin.done ]; do echo l >/proc/sysrq-trigger; sleep 0.1; done' &
        trig=$!
        sleep 0.2
        taskset -c 0 sh -c "echo 1000 >$knob"; r=$?
        touch /tmp/spin.done; wait $trig; rm -f /tmp/spin.done
        [ $r = 0 ] && [ $flag = vmx ] && [ "$(nmis)" -le "$before" ] && [ $tries -lt 5 ] || break
    done
    sleep 2     # the console thread skips the backlog while the level is low
    dmesg -n 5
    after=$(nmis)
    [ $r = 0 ] || { echo "writing $knob failed"; return 1; }
    dmesg | grep -q "NMI backtrace for cpu 0" || { echo "CPU 0 never answered the NMI"; dmesg | tail; return 1; }
    if [ $flag = vmx ] && [ "$after" -le "$before" ]; then
        echo "no NMI arrived in root mode in $tries spins (counter $before -> $after)"
        return 1
    fi
}
check launch.nmi_in_root_mode_reaches_dom0 nmi_in_root_mode_reaches_dom0

# A CPU going offline is handed back first; coming online, it is launched.
cpu_offline_online() {
    [ $last_cpu -ge 1 ] || { echo "needs 2 CPUs"; return 4; }
    dmesg -c >/dev/null
    echo 0 >/sys/devices/system/cpu/cpu$last_cpu/online || return 1
    off=$(dmesg | grep 'keel:')
    keel_cpuid >/tmp/cpuid.off; r_off=$?
    echo 1 >/sys/devices/system/cpu/cpu$last_cpu/online || return 1
    on=$(dmesg | grep 'keel:')
    echo "$off" | grep -q "CPU $last_cpu: back on bare metal" || { echo "offline: $off"; return 1; }
    ! grep -q "cpu $last_cpu" /tmp/cpuid.off && [ $r_off = 0 ] || { cat /tmp/cpuid.off; return 1; }
    echo "$on" | grep -q "CPU $last_cpu: Linux now runs as Dom0" || { echo "online: $on"; return 1; }
    keel_cpuid >/tmp/cpuid.out || { cat /tmp/cpuid.out; return 1; }
}
check launch.cpu_offline_online cpu_offline_online

ensure_loaded
tap_done
