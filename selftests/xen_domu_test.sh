#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# xen_domu_test: the Xen PVH toolstack (keelctl create/list/console/pause/destroy and
# keel-domd) against the loaded module, in TAP. Runs in the test VM (busybox sh) as root.
# Inputs: KEEL_DOMU_KERNEL (a PVH vmlinux or bzImage) and KEEL_DOMU_INITRD (its initramfs);
# the tests that boot a DomU SKIP, naming the variable, when either is missing.
. "$(dirname "$0")/tap.sh"
out=/tmp/xen_domu.out err=/tmp/xen_domu.err dir=/tmp/xen_domu
domu=keeltest-domu
log=/var/log/keel/$domu.log
mkdir -p $dir

tap_plan 12

has() { grep -q -- "$2" "$1" || { echo "no '$2' in $1:"; cat "$1"; return 1; }; }

# need_domu: returns 4 (SKIP) with the reason when the DomU's files are not given.
need_domu() {
    for v in KEEL_DOMU_KERNEL KEEL_DOMU_INITRD; do
        eval f=\$$v
        [ -n "$f" ] || { echo "$v is not set"; return 4; }
        [ -r "$f" ] || { echo "$v=$f is not readable"; return 4; }
    done
}

# cfg FILE NAME KERNEL [LINES...]: writes an xl.cfg.
cfg() {
    f=$1 n=$2 k=$3; shift 3
    {
        echo "name = \"$n\""
        echo 'type = "pvh"'
        echo "kernel = \"$k\""
        echo 'memory = 128'
        echo 'vcpus = 1'
        echo 'extra = "console=hvc0 earlyprintk=xen"'
        echo 'on_crash = "preserve"'
        for l in "$@"; do echo "$l"; done
    } >"$f"
}

# nothing_left NAME: no domain, no socket or state file, no process for NAME.
nothing_left() {
    keelctl list >$out 2>$err || { cat $err; return 1; }
    if grep -q "^$1 " $out; then echo "domain $1 left behind:"; cat $out; return 1; fi
    for f in /run/keel/$1.sock /run/keel/$1.json; do
        [ ! -e $f ] || { echo "$f left behind"; return 1; }
    done
    if ps | grep -v grep | grep -q "keel-domd.*$1"; then echo "a keel-domd is left:"; ps; return 1; fi
}

# create_fails MESSAGE CFG [OVERRIDES...]: keelctl create fails, says MESSAGE, leaves nothing.
create_fails() {
    msg=$1; shift
    if keelctl create "$@" >$out 2>$err; then echo "create succeeded:"; cat $out $err; return 1; fi
    has $err "$msg" || return 1
    nothing_left badguest
}

wait_log() { # wait_log PATTERN SECONDS
    i=0
    while [ $i -lt $(($2 * 10)) ]; do
        [ -f $log ] && grep -q "$1" $log && return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "no '$1' in $log after $2 s:"; tail -n 30 $log 2>/dev/null; return 1
}

# The error cases need no DomU kernel: the checks come before anything is built.
echo 'not a kernel' >$dir/notes.txt
missing_kernel() {
    cfg $dir/bad.cfg badguest /does/not/exist
    create_fails "cannot read the kernel /does/not/exist" $dir/bad.cfg
}
check xen_domu.create_missing_kernel_fails missing_kernel

not_a_kernel() {
    cfg $dir/bad.cfg badguest $dir/notes.txt
    create_fails "is not a kernel Keel can boot" $dir/bad.cfg
}
check xen_domu.create_not_a_kernel_fails not_a_kernel

vcpus_zero() {
    cfg $dir/bad.cfg badguest $dir/notes.txt
    create_fails "a domain needs at least 1 vCPU" $dir/bad.cfg vcpus=0
}
check xen_domu.create_vcpus_zero_fails vcpus_zero

too_much_memory() {
    cfg $dir/bad.cfg badguest $dir/notes.txt
    create_fails "more than the host's" $dir/bad.cfg memory=16777216
}
check xen_domu.create_too_much_memory_fails too_much_memory

not_pvh() {
    cfg $dir/bad.cfg badguest $dir/notes.txt
    create_fails "Keel runs PVH guests only" $dir/bad.cfg 'type="hvm"'
}
check xen_domu.create_hvm_refused not_pvh

boots() {
    need_domu || return $?
    rm -f $log
    cfg $dir/domu.cfg $domu "$KEEL_DOMU_KERNEL" "ramdisk = \"$KEEL_DOMU_INITRD\""
    keelctl create $dir/domu.cfg >$out 2>$err || { cat $out $err; return 1; }
    has $out "created domain $domu" || return 1
    [ -S /run/keel/$domu.sock ] && [ -f /run/keel/$domu.json ] || { ls -l /run/keel; return 1; }
    wait_log "Linux version" 60
}
check xen_domu.create_boots_and_logs_the_console boots

listed() {
    need_domu || return $?
    keelctl list >$out 2>$err || { cat $err; return 1; }
    head -1 $out | grep -q "^Name  *ID  *Mem  *VCPUs  *State  *Time(s)" || { cat $out; return 1; }
    line=$(grep "^$domu " $out) || { cat $out; return 1; }
    set -- $line
    # Name ID Mem VCPUs State Time(s)
    [ "$3 $4" = "128 1" ] || { echo "unexpected: $line"; return 1; }
    case $5 in r-----|-b----) ;; *) echo "unexpected state: $line"; return 1 ;; esac
    keelctl list --json >$out || return 1
    has $out "\"name\": \"$domu\"" && has $out '"xen": true' && has $out '"domd_pid": '
}
check xen_domu.list_shows_it listed

console_pipe() {
    need_domu || return $?
    keelctl console --timeout 2 $domu </dev/null >$out 2>$err || { cat $err; return 1; }
    has $out "Linux version"
}
check xen_domu.console_pipe_mode console_pipe

pause_unpause() {
    need_domu || return $?
    keelctl pause $domu || return 1
    keelctl list | grep "^$domu " | grep -q -- '--p---' || { keelctl list; return 1; }
    ! keelctl pause $domu 2>$err && has $err "already paused" || return 1
    keelctl unpause $domu || return 1
    keelctl list | grep "^$domu " | grep -q -- '--p---' && { keelctl list; return 1; }
    ! keelctl unpause $domu 2>$err && has $err "not paused"
}
check xen_domu.pause_unpause pause_unpause

duplicate_name() {
    need_domu || return $?
    if keelctl create $dir/domu.cfg >$out 2>$err; then echo "second create succeeded"; return 1; fi
    has $err "a domain named '$domu' already exists"
}
check xen_domu.create_duplicate_name_fails duplicate_name

destroy() {
    need_domu || return $?
    id=$(keelctl list | awk -v n=$domu '$1 == n { print $2 }')
    [ -n "$id" ] || { keelctl list; return 1; }
    keelctl destroy $id || return 1
    nothing_left $domu
}
check xen_domu.destroy_by_id destroy

# A wedged process (stopped with SIGSTOP) cannot answer: destroy kills it after 2 s.
destroy_wedged() {
    need_domu || return $?
    keelctl create -p $dir/domu.cfg >$out 2>$err || { cat $err; return 1; }
    pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/keel/$domu.json)
    [ -n "$pid" ] || { cat /run/keel/$domu.json; return 1; }
    kill -STOP $pid
    keelctl destroy $domu 2>$err || { cat $err; kill -KILL $pid; return 1; }
    nothing_left $domu
}
check xen_domu.destroy_wedged_process destroy_wedged

tap_done
