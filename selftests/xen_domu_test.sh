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

tap_plan 21

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
        echo 'extra = "console=hvc0"'
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
    has $out "\"name\": \"$domu\"" && has $out '"xen": true' && has $out '"domd_pid": ' || return 1
    # keelctl domid / domname, as xl's: the list's id and back.
    [ "$(keelctl domid $domu)" = "$2" ] && [ "$(keelctl domname $2)" = $domu ] ||
        { echo "domid '$(keelctl domid $domu)', domname '$(keelctl domname $2)', list id $2"; return 1; }
    ! keelctl domid no-such-domain 2>$err && has $err "no domain named 'no-such-domain'" || return 1
    # keelctl uptime, as xl's: Domain-0 and the DomU, whose uptime (H:MM:SS, from its
    # start_time in XenStore) is no more than the few minutes since it was created.
    keelctl uptime >$out 2>$err || { cat $err; return 1; }
    has $out "^Domain-0 .* 0 " || return 1
    up=$(awk -v n=$domu -v id=$2 '$1 == n && $2 == id { print $3 }' $out)
    secs=$(echo "$up" | awk -F: 'NF == 3 { print $1 * 3600 + $2 * 60 + $3 }')
    [ -n "$secs" ] && [ "$secs" -le 900 ] || { echo "uptime '$up' of $domu:"; cat $out; return 1; }
    keelctl uptime -s $2 >$out || return 1
    has $out " up .*, $domu ($2)\$" || return 1
    # keelctl vcpu-list, as xl's: its one vCPU is a thread of its keel-domd, on a host CPU,
    # running or blocked, with a CPU time and the host's CPUs as its affinity.
    id=$2
    keelctl vcpu-list $domu >$out 2>$err || { cat $err; return 1; }
    [ "$(grep -c "^$domu " $out)" = 1 ] || { cat $out; return 1; }
    set -- $(grep "^$domu " $out)
    # Name ID VCPU CPU State Time(s) Hard / Soft
    [ "$2 $3" = "$id 0" ] && [ "$4" -ge 0 ] && [ "$4" -lt "$(nproc --all)" ] &&
        case $5 in r--|-b-) true ;; *) false ;; esac &&
        echo "$6" | grep -qE '^[0-9]+\.[0-9]$' && [ "$8 $9" = "/ all" ] ||
        { echo "unexpected vcpu-list:"; cat $out; return 1; }
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

# keelctl mem-set: the guest's balloon gives memory back (the module's count, `Mem`, goes
# down to the target) and Dom0's free memory grows by about that much; then takes it again.
mem_kib() { sed -n 's/^MemFree: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
mem_col() { keelctl list | awk -v n=$domu '$1 == n { print $3 }'; }
wait_mem() { # wait_mem MAX_MIB MIN_MIB SECONDS: Mem within [MIN, MAX]
    i=0
    while [ $i -lt $(($3 * 10)) ]; do
        m=$(mem_col); [ -n "$m" ] && [ "$m" -le $1 ] && [ "$m" -ge $2 ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "Mem is '$(mem_col)' MiB after $3 s, not within $2..$1"; keelctl list; return 1
}
mem_set() {
    need_domu || return $?
    # The guest's balloon driver is up once its XenStore works: the boot's console log is
    # complete by the shell's prompt.
    wait_log "keel-domu: shell" 240 || return 1
    before=$(mem_kib)
    keelctl mem-set $domu 64 || return 1
    wait_mem 66 60 60 || return 1
    sleep 1
    after=$(mem_kib)
    echo "Dom0 MemFree $before -> $after kB (+$(((after - before) / 1024)) MiB)"
    [ $((after - before)) -ge $((48 * 1024)) ] || { echo "Dom0 got less than 48 MiB back"; return 1; }
    keelctl mem-set $domu 128m || return 1
    wait_mem 128 124 60 || return 1
    ! keelctl mem-set $domu 4g 2>$err && has $err "more than its maximum memory"
}
check xen_domu.mem_set_balloons_down_and_up mem_set

# keelctl sysrq: the guest takes the key (its Xen drivers empty control/sysrq) and runs it:
# h prints the help line on its console. A bad key is refused before anything is written.
sysrq() {
    need_domu || return $?
    wait_log "keel-domu: shell" 240 || return 1
    ! keelctl sysrq $domu hh 2>$err && has $err "must be one printable character" || return 1
    [ -z "$(keelctl xenstore read /local/domain/$(keelctl domid $domu)/control/sysrq)" ] ||
        { echo "a bad key was written"; return 1; }
    keelctl sysrq --timeout 120 $domu h >$out 2>$err || { cat $out $err; return 1; }
    has $out "sent sysrq 'h' to domain $domu" || return 1
    wait_log "sysrq: HELP" 60
}
check xen_domu.sysrq_reaches_the_guest sysrq

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

# The Linux DomU's own checks (scripts/build-domu-initramfs, keel.run=...): a DomU named $1
# with $2 vCPUs running the actions $3, with the other xl.cfg lines after.
start_domu() {
    n=$1 v=$2 actions=$3; shift 3
    rm -f /var/log/keel/$n.log
    cfg $dir/$n.cfg $n "$KEEL_DOMU_KERNEL" "ramdisk = \"$KEEL_DOMU_INITRD\"" "vcpus = $v" \
        "extra = \"console=hvc0 keel.run=$actions keel.work=2\"" "$@"
    keelctl create $dir/$n.cfg >$out 2>$err || { cat $out $err; return 1; }
}

# wait_for NAME PATTERN SECONDS [COUNT] [STEP]: COUNT (default 1) lines of NAME's console log
# match; it looks every STEP tenths of a second (default 1). Each look forks grep and sleep,
# which costs Dom0 a good part of a CPU under Bochs at 10 a second: a wait beside a
# measurement looks less often.
wait_for() {
    f=/var/log/keel/$1.log i=0 step=${5:-1}
    while [ $i -lt $(($3 * 10)) ]; do
        [ -f $f ] && [ "$(grep -c -- "$2" $f)" -ge "${4:-1}" ] && return 0
        sleep $((step / 10)).$((step % 10)); i=$((i + step))
    done
    echo "no ${4:-1} '$2' in $f after $3 s:"; tail -n 30 $f 2>/dev/null; return 1
}

# gone NAME SECONDS: the domain and its process end by themselves.
gone() {
    i=0
    while [ $i -lt $(($2 * 10)) ]; do
        keelctl list 2>/dev/null | grep -q "^$1 " || { nothing_left $1; return; }
        sleep 0.1; i=$((i + 1))
    done
    echo "$1 still there after $2 s:"; keelctl list; return 1
}

# SMP: nproc is the vCPU count, a parallel job uses every vCPU, the clock is Dom0's, the
# local APIC is in x2APIC mode, and poweroff inside ends the domain (on_poweroff = "destroy").
smp() {
    need_domu || return $?
    vcpus=$1
    start_domu smp$vcpus $vcpus info,parallel,poweroff 'on_poweroff = "destroy"' || return 1
    # The DomU's date +%s against Dom0's when the line comes out: within a second (it reaches
    # the log within ~100 ms; the polling here adds 100 ms).
    wait_for smp$vcpus "keel-domu: date" 240 || return 1
    us=$(date +%s)
    # The jobs are timed in the DomU while this waits: it looks every 2 s, not 10 times a second.
    wait_for smp$vcpus "keel-domu: parallel" 600 1 20 || return 1
    f=/var/log/keel/smp$vcpus.log
    tr -d '\r' <$f | grep -q "keel-domu: nproc $vcpus\$" || { grep keel-domu $f; return 1; }
    # Linux takes the x2APIC that CPUID offers (Xen's x2apic_available), and starts its
    # other vCPUs through the x2APIC's ICR.
    grep -q "x2apic enabled" $f || { grep -i apic $f; return 1; }
    them=$(sed -n 's/^keel-domu: date \([0-9]*\).*/\1/p' $f | tr -d '\r')
    [ -n "$them" ] && [ $((us - them)) -le 2 ] && [ $((them - us)) -le 1 ] ||
        { echo "DomU date '$them', Dom0 $us"; return 1; }
    # Every vCPU took part: N jobs at once took well under N times one job.
    set -- $(sed -n 's/^keel-domu: parallel jobs=\([0-9]*\) one-ms=\([0-9]*\) all-ms=\([0-9]*\).*/\1 \2 \3/p' $f | tr -d '\r')
    [ "$1" = "$vcpus" ] || { grep parallel $f; return 1; }
    if [ $vcpus -gt 1 ]; then
        [ $(($3 * 4)) -lt $(($2 * vcpus * 3)) ] || { echo "no speed-up: jobs=$1 one=$2 all=$3 ms"; return 1; }
    fi
    gone smp$vcpus 120
}
cmdline_arg() { tr " " "\n" </proc/cmdline | sed -n "s/^$1=//p" | tail -n1; }
vcpus_max=2
[ "$(cmdline_arg keel_emulator)" = qemu ] && vcpus_max=4
check xen_domu.one_vcpu_boots_runs_and_powers_off smp 1
check xen_domu.smp_boots_runs_in_parallel_and_powers_off smp $vcpus_max

# A shell on hvc0 through keelctl console (pipe mode): a command typed in runs.
shell() {
    need_domu || return $?
    start_domu shell 1 info 'on_poweroff = "destroy"' || return 1
    wait_for shell "keel-domu: ready" 240 || return 1
    printf 'echo hello-$((6*7))\npoweroff\n' | keelctl console --timeout 60 shell >$out 2>$err
    has $out hello-42 || { cat $err; return 1; }
    gone shell 60
}
check xen_domu.console_reaches_a_shell shell

# reboot inside restarts the domain (on_reboot = "restart"): it boots again.
reboot_restarts() {
    need_domu || return $?
    start_domu rebooter 1 reboot 'on_reboot = "restart"' || return 1
    wait_for rebooter "keel-domu: init" 240 2 || return 1
    keelctl destroy rebooter || return 1
    nothing_left rebooter
}
check xen_domu.reboot_restarts_it reboot_restarts

# A panic follows on_crash: "preserve" keeps the domain, crashed, until destroyed.
panic_preserved() {
    need_domu || return $?
    start_domu crasher 1 panic 'on_crash = "preserve"' || return 1
    wait_for crasher "Kernel panic" 240 || return 1
    i=0
    while ! keelctl list | grep "^crasher " | grep -q -- '----c-'; do
        i=$((i + 1)); [ $i -lt 100 ] || { keelctl list; return 1; }
        sleep 0.1
    done
    keelctl destroy crasher || return 1
    nothing_left crasher
}
check xen_domu.panic_follows_on_crash panic_preserved

# Two DomUs at once, each to userspace.
two() {
    need_domu || return $?
    start_domu twin1 1 info 'on_poweroff = "destroy"' || return 1
    start_domu twin2 1 info 'on_poweroff = "destroy"' || return 1
    wait_for twin1 "keel-domu: ready" 240 && wait_for twin2 "keel-domu: ready" 240 || return 1
    keelctl destroy twin1 && keelctl destroy twin2 || return 1
    nothing_left twin1 && nothing_left twin2
}
check xen_domu.two_domus_at_once two

# The host is unaffected: every domain is gone and keel.ko still answers.
host_fine() {
    keelctl info >$out 2>$err || { cat $err; return 1; }
    [ -z "$(keelctl list | sed 1d)" ] || { keelctl list; return 1; }
}
check xen_domu.host_unaffected host_fine

tap_done
