#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# xen_disk_test: XenStore and the PV block backend with a Linux DomU, in TAP. Runs in the test
# VM (busybox sh) as root. A DomU with three disks (an ext4 image as xvda in xl's key=value
# syntax, a raw image as xvdb and a read-only one as xvdc in the positional syntax) sees all
# three with their sizes and xvdc read-only, mounts xvda, writes a checksummed file, reads it
# back from the disk; both halves of each disk are Connected in XenStore; `keelctl shutdown -w`
# powers it off through control/shutdown and the data is in the image; `keelctl reboot -w`
# restarts it (a new id) and the file is still there; data fsync'd just before a
# `keelctl destroy` is in the image; nothing is left in XenStore afterwards; bad disk
# specs are refused naming the disk, leaving nothing behind. The DomU has 2 vCPUs and its
# disks one ring per vCPU, each served through io_uring. While it runs, `keelctl block-attach`
# adds a disk the guest sees and writes to, `block-list` shows it Connected, `block-detach`
# takes it from the guest and from XenStore; a paused guest keeps it after 10 s, and --force
# takes it at once; attach errors name the disk; a disk attached before a reboot is there
# after it.
# Inputs: KEEL_DOMU_KERNEL, KEEL_DOMU_INITRD, KEEL_DOMU_DISK (scripts/build-initramfs --domu);
# the tests that boot a DomU SKIP, naming the variable, when one is missing.
. "$(dirname "$0")/tap.sh"
out=/tmp/xen_disk.out err=/tmp/xen_disk.err dir=/tmp/xen_disk
mkdir -p $dir /mnt/keel-disk
rm -f $dir/guest_n
dmesg_lines=$(dmesg | wc -l)

tap_plan 12

has() { grep -q -- "$2" "$1" || { echo "no '$2' in $1:"; cat "$1"; return 1; }; }

need_domu() {
    for v in KEEL_DOMU_KERNEL KEEL_DOMU_INITRD KEEL_DOMU_DISK; do
        eval f=\$$v
        [ -n "$f" ] || { echo "$v is not set"; return 4; }
        [ -r "$f" ] || { echo "$v=$f is not readable"; return 4; }
    done
}

# cfg NAME [LINES...]: an xl.cfg for a 2-vCPU DomU running the disk checks, with three disks.
cfg() {
    n=$1; shift
    {
        echo "name = \"$n\""
        echo 'type = "pvh"'
        echo "kernel = \"$KEEL_DOMU_KERNEL\""
        echo "ramdisk = \"$KEEL_DOMU_INITRD\""
        echo 'memory = 128'
        echo 'vcpus = 2'
        echo 'extra = "console=hvc0 keel.run=disk"'
        echo "disk = [ 'format=raw, vdev=xvda, access=rw, target=$dir/a.ext4',"
        echo "         '$dir/b.img,raw,xvdb,rw', '$dir/c.img,raw,xvdc,r' ]"
        for l in "$@"; do echo "$l"; done
    } >$dir/$n.cfg
}

fresh_disks() {
    cp "$KEEL_DOMU_DISK" $dir/a.ext4 &&
        dd if=/dev/zero of=$dir/b.img bs=1M count=3 2>/dev/null &&
        dd if=/dev/zero of=$dir/c.img bs=1M count=1 2>/dev/null
}

# wait_for NAME PATTERN SECONDS [COUNT]: COUNT (default 1) lines of NAME's console log match.
wait_for() {
    f=/var/log/keel/$1.log i=0
    while [ $i -lt $(($3 * 10)) ]; do
        [ -f $f ] && [ "$(tr -d '\r' <$f | grep -c -- "$2")" -ge "${4:-1}" ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "no ${4:-1} '$2' in $f after $3 s:"; tail -n 40 $f 2>/dev/null; return 1
}

domid() { keelctl list | sed -n "s/^$1  *\([0-9][0-9]*\) .*/\1/p"; }

# The guest's commands that wait (up to 30 s) for a disk to come or go, then print its size
# in sectors or "none".
appears() { echo "i=0; while [ ! -e /sys/block/$1 ] && [ \$i -lt 30 ]; do sleep 1; i=\$((i+1)); done; cat /sys/block/$1/size 2>/dev/null || echo none"; }
goes() { echo "i=0; while [ -e /sys/block/$1 ] && [ \$i -lt 30 ]; do sleep 1; i=\$((i+1)); done; cat /sys/block/$1/size 2>/dev/null || echo none"; }

# no_vbd DOMID DEVID: neither half of disk DEVID is in XenStore.
no_vbd() {
    for p in /local/domain/$1/device/vbd/$2 /local/domain/0/backend/vbd/$1/$2; do
        if keelctl xenstore read $p >/dev/null 2>&1; then
            echo "$p is still in XenStore:"; keelctl xenstore ls $p; return 1
        fi
    done
}

# The sums the DomU printed last: "WRITTEN READ".
sums() { tr -d '\r' </var/log/keel/$1.log | sed -n 's/^keel-domu: disk data \([0-9a-f]*\) \([0-9a-f]*\)$/\1 \2/p' | tail -n1; }

# image_sum: the sha256 of /data in the ext4 image, as Dom0's kernel mounts a copy of it (the
# guest was stopped without unmounting: mounting replays the journal, as a reboot would).
image_sum() {
    cp $dir/a.ext4 $dir/check.ext4 || return 1
    mount -o loop -t ext4 $dir/check.ext4 /mnt/keel-disk || return 1
    set -- $(sha256sum </mnt/keel-disk/data 2>/dev/null)
    umount /mnt/keel-disk
    rm -f $dir/check.ext4
    echo "$1"
}

# nothing_left NAME DOMID: no domain, process or XenStore node for it.
nothing_left() {
    keelctl list 2>/dev/null | grep -q "^$1 " && { echo "domain $1 left:"; keelctl list; return 1; }
    [ -z "$2" ] && return 0
    for p in /local/domain/$2 /local/domain/0/backend/vbd/$2; do
        if keelctl xenstore read $p >/dev/null 2>&1; then
            echo "$p is still in XenStore:"; keelctl xenstore ls $p; return 1
        fi
    done
}

gone() { # gone NAME SECONDS
    i=0
    while [ $i -lt $(($2 * 10)) ]; do
        keelctl list 2>/dev/null | grep -q "^$1 " || return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "$1 still there after $2 s:"; keelctl list; return 1
}

bad_disk() {
    # The disk checks come after the kernel's: a real kernel is needed.
    need_domu || return $?
    cp "$KEEL_DOMU_KERNEL" $dir/k
    printf 'name = "baddisk"\ntype = "pvh"\nkernel = "%s"\nmemory = 64\n%s\n' $dir/k \
        "disk = [ '$dir/missing.img,raw,xvda,rw' ]" >$dir/bad.cfg
    if keelctl create $dir/bad.cfg >$out 2>$err; then echo "create succeeded"; cat $out $err; return 1; fi
    has $err "disk xvda: cannot open $dir/missing.img" || return 1
    printf 'name = "baddisk"\ntype = "pvh"\nkernel = "%s"\nmemory = 64\n%s\n' $dir/k \
        "disk = [ 'format=qcow2, vdev=xvda, target=$dir/k' ]" >$dir/bad.cfg
    if keelctl create $dir/bad.cfg >$out 2>$err; then echo "create succeeded"; cat $out $err; return 1; fi
    has $err "disk xvda: format" || return 1
    nothing_left baddisk ""
}
check xen_disk.bad_disk_refused bad_disk

# One DomU: the disks as the guest sees them, the data round trip, XenStore's view.
boot_disks() {
    need_domu || return $?
    fresh_disks || return 1
    rm -f /var/log/keel/disks.log
    cfg disks 'on_poweroff = "destroy"' 'on_reboot = "restart"'
    # The module's users before the domain (no other domain runs now): shutdown -w checks
    # that they are back to this when it returns.
    cat /sys/module/keel/refcnt >$dir/refcnt
    keelctl create $dir/disks.cfg >$out 2>$err || { cat $out $err; return 1; }
    wait_for disks "keel-domu: ready" 300 || return 1
    f=/var/log/keel/disks.log
    # 16 MiB, 3 MiB and 1 MiB in 512-byte sectors; xvdc read-only.
    for l in "disk xvda sectors=32768 ro=0" "disk xvdb sectors=6144 ro=0" \
        "disk xvdc sectors=2048 ro=1" "disk ro-write refused"; do
        tr -d '\r' <$f | grep -q "keel-domu: $l" || { echo "no '$l':"; grep keel-domu $f; return 1; }
    done
    set -- $(sums disks)
    [ -n "$1" ] && [ "$1" = "$2" ] || { echo "written '$1' read '$2'"; grep keel-domu $f; return 1; }
}
check xen_disk.domu_sees_three_disks_and_reads_back boot_disks

xenstore_view() {
    need_domu || return $?
    d=$(domid disks); [ -n "$d" ] || { echo "no domain disks"; keelctl list; return 1; }
    for dev in 51712 51728 51744; do
        fe=$(keelctl xenstore read /local/domain/$d/device/vbd/$dev/state) || return 1
        be=$(keelctl xenstore read /local/domain/0/backend/vbd/$d/$dev/state) || return 1
        [ "$fe $be" = "4 4" ] || { echo "vbd $dev: frontend $fe backend $be"; keelctl xenstore ls /local/domain/0/backend/vbd/$d; return 1; }
    done
    [ "$(keelctl xenstore read /local/domain/0/backend/vbd/$d/51744/mode)" = r ] || return 1
    [ "$(keelctl xenstore read /local/domain/$d/name)" = disks ] || return 1
    # The guest announced its PV shutdown control.
    keelctl xenstore read /local/domain/$d/control/feature-poweroff >/dev/null || return 1
}
check xen_disk.both_halves_connected_in_xenstore xenstore_view

# vcpus = 2: the backend offers two rings and blkfront sets up both, under queue-N/.
multi_queue() {
    need_domu || return $?
    d=$(domid disks); [ -n "$d" ] || { echo "no domain disks"; keelctl list; return 1; }
    for dev in 51712 51728 51744; do
        fe=/local/domain/$d/device/vbd/$dev be=/local/domain/0/backend/vbd/$d/$dev
        m=$(keelctl xenstore read $be/multi-queue-max-queues) || return 1
        q=$(keelctl xenstore read $fe/multi-queue-num-queues) || { keelctl xenstore ls $fe; return 1; }
        [ "$m $q" = "2 2" ] || { echo "vbd $dev: max-queues $m num-queues $q"; return 1; }
        keelctl xenstore read $fe/queue-1/event-channel >/dev/null || { keelctl xenstore ls $fe; return 1; }
    done
    # Each ring's I/O goes through io_uring (the test kernel has it; the worker thread is
    # only the fallback).
    for v in xvda xvdb xvdc; do
        for r in 0 1; do
            tr -d '\r' </var/log/keel/disks.log | grep -q "disk $v: ring $r: I/O through io_uring" ||
                { echo "$v ring $r not through io_uring:"; grep -a 'keel-domd\] disk' /var/log/keel/disks.log; return 1; }
        done
    done
}
check xen_disk.one_ring_per_vcpu_through_io_uring multi_queue

# block-attach: a 2 MiB image as xvdd (51760) reaches the running guest, which writes to it;
# block-list shows it Connected.
hot_attach() {
    need_domu || return $?
    d=$(domid disks); [ -n "$d" ] || { echo "no domain disks"; keelctl list; return 1; }
    dd if=/dev/zero of=$dir/d.img bs=1M count=2 2>/dev/null || return 1
    keelctl block-attach disks "format=raw, vdev=xvdd, access=rw, target=$dir/d.img" >$out 2>$err ||
        { cat $out $err; return 1; }
    size=$(guest disks "$(appears xvdd)") || return 1
    [ "$size" = 4096 ] || { echo "the guest's xvdd has '$size' sectors"; return 1; }
    w=$(guest disks "printf hotplugged | dd of=/dev/xvdd conv=fsync 2>/dev/null && echo written") || return 1
    [ "$w" = written ] && [ "$(head -c 10 $dir/d.img)" = hotplugged ] ||
        { echo "the guest's write: '$w'; the image has '$(head -c 10 $dir/d.img)'"; return 1; }
    keelctl block-list disks >$out 2>$err || { cat $out $err; return 1; }
    grep -q "^51760 *0 *$d *4 .*/local/domain/0/backend/vbd/$d/51760\$" $out ||
        { echo "xvdd not Connected:"; cat $out; return 1; }
    [ "$(head -n1 $out)" = "Vdev  BE  handle state evt-ch ring-ref BE-path" ] || { cat $out; return 1; }
    [ "$(grep -c '^5' $out)" = 4 ] || { echo "not 4 disks:"; cat $out; return 1; }
    keelctl block-list --json disks >$out 2>$err || { cat $out $err; return 1; }
    has $out '"vdev": "xvdd"' && has $out "\"target\": \"$dir/d.img\"" && has $out '"queues": 2'
}
check xen_disk.block_attach_reaches_the_guest hot_attach

# block-detach: the guest lets xvdd go, it leaves the guest, XenStore and block-list.
hot_detach() {
    need_domu || return $?
    d=$(domid disks); [ -n "$d" ] || { echo "no domain disks"; keelctl list; return 1; }
    keelctl block-detach disks xvdd >$out 2>$err || { cat $out $err; tail -n 20 /var/log/keel/disks.log; return 1; }
    size=$(guest disks "$(goes xvdd)") || return 1
    [ "$size" = none ] || { echo "the guest still has xvdd ($size sectors)"; return 1; }
    no_vbd $d 51760 || return 1
    keelctl block-list disks >$out 2>$err || { cat $out $err; return 1; }
    if grep -q "^51760 " $out; then echo "block-list still lists it:"; cat $out; return 1; fi
    # A guest that does not answer (paused) keeps the disk after 10 s, and the error says
    # so; --force removes it without asking, by device number too.
    keelctl block-attach disks "$dir/d.img,raw,xvde,r" >$out 2>$err || { cat $out $err; return 1; }
    size=$(guest disks "$(appears xvde)") || return 1
    [ "$size" = 4096 ] || { echo "the guest's xvde has '$size' sectors"; return 1; }
    keelctl pause disks || return 1
    if keelctl block-detach disks xvde >$out 2>$err; then
        keelctl unpause disks; echo "detached from a paused guest"; return 1
    fi
    has $err "disk xvde: the guest did not release it within 10 s (its frontend is 4 (Connected)" ||
        { keelctl unpause disks; return 1; }
    [ "$(keelctl xenstore read /local/domain/0/backend/vbd/$d/51776/state)" = 5 ] ||
        { keelctl unpause disks; echo "the backend is not Closing"; return 1; }
    keelctl block-detach --force disks 51776 >$out 2>$err || { keelctl unpause disks; cat $out $err; return 1; }
    keelctl unpause disks || return 1
    no_vbd $d 51776 || return 1
    size=$(guest disks "$(goes xvde)") || return 1
    [ "$size" = none ] || { echo "the guest still has xvde ($size sectors)"; return 1; }
}
check xen_disk.block_detach_takes_it_from_guest_and_xenstore hot_detach

# refused SPEC MESSAGE: block-attach of SPEC to "disks" fails saying MESSAGE.
refused() {
    if keelctl block-attach disks "$1" >$out 2>$err; then echo "'$1' was attached"; return 1; fi
    has $err "$2"
}

# Attach and detach errors name the disk and leave nothing behind.
hot_errors() {
    need_domu || return $?
    d=$(domid disks); [ -n "$d" ] || { echo "no domain disks"; keelctl list; return 1; }
    refused "$dir/d.img,raw,xvdb,rw" "disk xvdb: the domain already has a disk xvdb" || return 1
    refused "$dir/none.img,raw,xvdf,rw" "disk xvdf: cannot open $dir/none.img" || return 1
    refused "format=qcow2, vdev=xvdf, target=$dir/d.img" "disk xvdf: format" || return 1
    refused "$dir/d.img,raw,xvd0,rw" "invalid virtual disk identifier" || return 1
    no_vbd $d 51792 || return 1
    if keelctl block-detach disks xvdz >$out 2>$err; then echo "detached xvdz"; return 1; fi
    has $err "has no disk xvdz" || return 1
    # xvdb is still served.
    keelctl block-list disks >$out 2>$err && grep -q "^51728 *0 *$d *4 " $out || { cat $out $err; return 1; }
}
check xen_disk.block_attach_errors_name_the_disk hot_errors

# keelctl shutdown -w: control/shutdown, the guest powers off, the data is in the image;
# when it returns, the domain's keel-domd has let go of the module (rmmod would work).
shutdown_w() {
    need_domu || return $?
    d=$(domid disks)
    set -- $(sums disks); written=$1
    keelctl shutdown -w --timeout 120 disks >$out 2>$err || { cat $out $err; tail -n 20 /var/log/keel/disks.log; return 1; }
    r=$(cat /sys/module/keel/refcnt)
    [ "$r" = "$(cat $dir/refcnt)" ] || { echo "keel.ko has $r users after shutdown -w, $(cat $dir/refcnt) before the domain"; ps; return 1; }
    gone disks 30 || return 1
    nothing_left disks "$d" || return 1
    s=$(image_sum) || return 1
    [ "$s" = "$written" ] || { echo "image has '$s', the guest wrote '$written'"; return 1; }
}
check xen_disk.shutdown_powers_off_and_data_is_kept shutdown_w

# keelctl reboot -w: a new domain id; the file written before is there; data written and
# fsync'd right before a destroy is in the image.
reboot_then_destroy() {
    need_domu || return $?
    # Two more Linux boots: about 5 minutes under Bochs, where the CI's time budget does not
    # have them; QEMU runs it (the backend and the toolstack are the same on both vendors).
    if [ "$(tr ' ' '\n' </proc/cmdline | sed -n 's/^keel_emulator=//p' | tail -n1)" = bochs ]; then
        echo "two more DomU boots under Bochs: run under QEMU only (time budget)"; return 4
    fi
    rm -f /var/log/keel/disks.log
    keelctl create $dir/disks.cfg >$out 2>$err || { cat $out $err; return 1; }
    wait_for disks "keel-domu: ready" 300 || return 1
    d1=$(domid disks)
    set -- $(sums disks); first=$1
    # A disk attached now is there after the reboot, as xl keeps it.
    keelctl block-attach disks "$dir/d.img,raw,xvdd,rw" >$out 2>$err || { cat $out $err; return 1; }
    keelctl reboot -w --timeout 120 disks >$out 2>$err || { cat $out $err; return 1; }
    d2=$(domid disks)
    [ -n "$d2" ] && [ "$d2" != "$d1" ] || { echo "ids $d1 -> $d2"; keelctl list; return 1; }
    wait_for disks "keel-domu: ready" 300 2 || return 1
    tr -d '\r' </var/log/keel/disks.log | grep -q "keel-domu: disk old $first" ||
        { echo "the file written before the reboot ($first) is not there:"; grep keel-domu /var/log/keel/disks.log; return 1; }
    tr -d '\r' </var/log/keel/disks.log | grep -q "keel-domu: disk xvdd sectors=4096 ro=0" ||
        { echo "the disk attached before the reboot is not there:"; grep keel-domu /var/log/keel/disks.log; return 1; }
    set -- $(sums disks); second=$1
    [ "$second" != "$first" ] || { echo "the second run wrote the same data"; return 1; }
    keelctl destroy disks || return 1
    nothing_left disks "$d2" || return 1
    s=$(image_sum) || return 1
    [ "$s" = "$second" ] || { echo "image has '$s', the guest wrote '$second' before the destroy"; return 1; }
}
check xen_disk.reboot_keeps_data_and_destroy_loses_nothing reboot_then_destroy

xenstore_cleaned() {
    need_domu || return $?
    keelctl xenstore ls /local/domain >$out 2>$err || { cat $err; return 1; }
    if grep -q "^ *[1-9][0-9]* = " $out; then echo "a DomU's home is left:"; cat $out; return 1; fi
    keelctl xenstore ls /local/domain/0/backend/vbd >$out 2>/dev/null
    if grep -q "^ *[1-9]" $out; then echo "backend nodes left:"; cat $out; return 1; fi
}
check xen_disk.xenstore_cleaned_after xenstore_cleaned

host_fine() {
    # The host still works, and its log got no warning while these tests ran.
    dmesg | sed "1,${dmesg_lines}d" | grep -E "WARNING|BUG:|Oops" && return 1
    keelctl info >/dev/null
}
check xen_disk.host_unaffected host_fine

xenstored_running() {
    need_domu || return $?
    pidof keel-xenstored >/dev/null || { echo "no keel-xenstored"; ps; return 1; }
    keelctl xenstore read /local/domain/0/name >/dev/null 2>&1 || keelctl xenstore ls / >/dev/null
}
check xen_disk.xenstored_started_on_demand xenstored_running

tap_done
