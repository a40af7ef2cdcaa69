#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# xen_net_test: the PV network backend with a Linux DomU, bridged, in TAP. Runs in the test VM
# (busybox sh) as root. Dom0 has a bridge (keelbr0, 10.99.0.1/24); a DomU with `vif =
# ['bridge=keelbr0']` and two vCPUs (one under Bochs) gets eth0 from its own xen-netfront (a
# queue pair per vCPU, split event channels: a thread and a TAP queue each in Dom0), with the
# stable default MAC in Xen's 00:16:3e range (the same after a restart) shown in XenStore;
# Dom0's end is the TAP vif<domid>.0 (Xen's fe:ff:ff:ff:ff:ff), a port of the bridge; the DomU
# pings Dom0, a checksummed file crosses each way over TCP (HTTP: the DomU fetches Dom0's, Dom0
# fetches the DomU's), and so do two 64 MiB TCP streams (16 MiB under Bochs) whose every byte
# the receiver checks (keel_netbench --verify); `keelctl network-attach` adds a second vif
# the guest connects (network-list shows it Connected, its TAP on the bridge),
# `network-detach` takes it from the guest, Dom0 and XenStore, and their errors name the vif;
# after `keelctl destroy` the TAP and the vif's XenStore directories are gone.
# A second DomU on the bridge (10.99.0.3) pings the first and fetches its file; its vif's
# rate=4Mb/s holds when Dom0 fetches its file.
# Routed (`script=vif-route, ip=10.99.1.2`): the vif has Dom0's address as a /32 and proxy
# ARP, Dom0 routes the guest's address to it; the DomU (10.99.1.2/24, Dom0 on the link) pings
# Dom0, Dom0 pings the DomU by its address and fetches its file; after destroy the route is
# gone. The routed and the NAT DomU also carry the two verified streams.
# NAT (`script=vif-nat, ip=10.99.2.2`): the vif has the network's first address (10.99.2.1,
# the guest's gateway) and an nftables table of its own (what comes back must carry the
# conntrack mark of a connection opened through this vif); a network namespace over a veth pair
# stands for the outside world (192.168.77.2, with no route back to 10.99.2.0/24): the DomU
# pings it and fetches a file from it (masqueraded as Dom0), while the namespace, even routed
# towards the DomU, reaches it neither by ping nor TCP (Dom0 itself still does); after destroy
# the table, the route and the TAP are gone. A vif that replaces the NAT DomU's (devid 0 again,
# the same address) does not inherit the connections made through the old one: the outside's
# late answer on such a connection is dropped and counted by the new vif's rule (without the
# marks it would reach the guest), while a connection opened through the new vif works. A NAT vif attached at run time gets a
# table of its own, removed at detach; `keelctl destroy` of a keel-domd that does not answer
# kills it and removes the tables it left.
# A NAT vif without ip= (attached to the routed DomU, so under Bochs too) gets vif-nat's
# default address, which its DHCP server gives the guest's udhcpc.
# A vif on a bridge that does not exist, a routed vif without ip=, a NAT vif without ip=
# whose devid leaves no room for vif-nat's default address, a NAT network that
# overlaps one of Dom0's (the bridge's), and a hotplug script Keel does not know are refused
# naming the vif, leaving nothing behind.
# The second bridged DomU and the NAT DomU run under QEMU only (two more DomU boots under
# Bochs would not fit the test budget; what they test is Dom0's side, the same on both
# vendors, whose PV data path the other DomUs cover).
# Inputs: KEEL_DOMU_KERNEL, KEEL_DOMU_INITRD; the tests that boot a DomU SKIP, naming the
# variable, when one is missing.
. "$(dirname "$0")/tap.sh"
out=/tmp/xen_net.out err=/tmp/xen_net.err dir=/tmp/xen_net
br=keelbr0 size=4 vcpus=1 bulk=64
mkdir -p $dir $dir/www
rm -f $dir/guest_n

tap_plan 18

has() { grep -q -- "$2" "$1" || { echo "no '$2' in $1:"; cat "$1"; return 1; }; }

need_domu() {
    for v in KEEL_DOMU_KERNEL KEEL_DOMU_INITRD; do
        eval f=\$$v
        [ -n "$f" ] || { echo "$v is not set"; return 4; }
        [ -r "$f" ] || { echo "$v=$f is not readable"; return 4; }
    done
}

# cfg NAME ACTIONS [LINES...]: an xl.cfg for a 1-vCPU DomU running ACTIONS.
cfg() {
    n=$1 actions=$2; shift 2
    {
        echo "name = \"$n\""
        echo 'type = "pvh"'
        echo "kernel = \"$KEEL_DOMU_KERNEL\""
        echo "ramdisk = \"$KEEL_DOMU_INITRD\""
        echo 'memory = 128'
        echo "vcpus = $vcpus"
        echo "extra = \"console=hvc0 keel.run=$actions keel.work=$size\""
        echo 'on_poweroff = "destroy"'
        for l in "$@"; do echo "$l"; done
    } >$dir/$n.cfg
}

# wait_for NAME PATTERN SECONDS: a line of NAME's console log matches.
wait_for() {
    f=/var/log/keel/$1.log i=0
    while [ $i -lt $(($3 * 10)) ]; do
        [ -f $f ] && grep -q -- "$2" $f && return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "no '$2' in $f after $3 s:"; tail -n 30 $f 2>/dev/null; return 1
}

# centis: the time since boot in hundredths of a second.
centis() { read -r up _ </proc/uptime; echo $((${up%.*} * 100 + 1${up#*.} - 100)); }

on_bochs() { [ "$(tr ' ' '\n' </proc/cmdline | sed -n 's/^keel_emulator=//p' | tail -n1)" = bochs ]; }

# Bochs moves 64 MiB each way in about 2 minutes of the test's time: 16 MiB there.
! on_bochs || bulk=16

# bulk NAME ADDR: the verified TCP streams of the DomU's net action (keel.bulk=): Dom0 takes
# $bulk MiB from it, then sends it as much; both ends check every byte.
bulk() {
    wait_for $1 "keel-domu: net bulk listening send" 300 || return 1
    keel_netbench client --recv --verify --host $2 --port 5201 --mib $bulk --timeout 1200 >$out 2>$err ||
        { echo "receiving from the DomU:"; cat $out $err; return 1; }
    has $out "verify=ok" || return 1
    wait_for $1 "keel-domu: net bulk listening recv" 60 || return 1
    keel_netbench client --send --verify --host $2 --port 5202 --mib $bulk --timeout 1200 >$out 2>$err ||
        { echo "sending to the DomU:"; cat $out $err; return 1; }
    has $out "verify=ok" || return 1
    wait_for $1 "keel-domu: net bulk netbench recv" 120 || return 1
    has /var/log/keel/$1.log "keel-domu: net bulk netbench recv bytes=$((bulk * 1048576)) .* verify=ok"
}

domid_of() { keelctl list | awk -v n=$1 '$1 == n { print $2 }'; }

bridge_up() {
    ip link show $br >/dev/null 2>&1 || brctl addbr $br || return 1
    ip addr add 10.99.0.1/24 dev $br 2>/dev/null
    ip link set $br up
}

# 1. The DomU's eth0 comes up with a stable 00:16:3e MAC; Dom0's vif is on the bridge.
up() {
    need_domu || return $?
    bridge_up || { echo "cannot make bridge $br"; return 1; }
    dd if=/dev/urandom of=$dir/www/blob bs=1M count=$size 2>/dev/null
    set -- $(sha256sum <$dir/www/blob); echo "$1" >$dir/dom0.sum
    httpd -h $dir/www -p 8080 || { echo "httpd did not start"; return 1; }
    rm -f /var/log/keel/netguest.log
    # Under Bochs one vCPU, for time (xen_domu_test boots SMP DomUs there).
    vcpus=2; ! on_bochs || vcpus=1
    cfg netguest "net keel.bulk=$bulk" "vif = [ 'bridge=$br' ]"; nq=$vcpus; vcpus=1
    keelctl create $dir/netguest.cfg >$out 2>$err || { cat $out $err; return 1; }
    wait_for netguest "keel-domu: net mac" 240 || return 1
    d=$(domid_of netguest)
    # Netfront takes a queue pair per vCPU, with split event channels: their keys under
    # queue-N/ when there are several, at the top for one.
    fe=/local/domain/$d/device/vif/0
    if [ $nq = 2 ]; then
        [ "$(keelctl xenstore read $fe/multi-queue-num-queues)" = 2 ] || { keelctl xenstore ls $fe; return 1; }
        for q in 0 1; do
            keelctl xenstore read $fe/queue-$q/event-channel-rx >/dev/null || { keelctl xenstore ls $fe; return 1; }
        done
    else
        keelctl xenstore read $fe/event-channel-rx >/dev/null || { keelctl xenstore ls $fe; return 1; }
    fi
    # ... and the backend serves that many, each with its pair of channels.
    wait_for netguest "vif 0: connected to vif$d.0 ($nq queue(s), split event channels" 60 || return 1
    mac=$(tr -d '\r' </var/log/keel/netguest.log | sed -n 's/^keel-domu: net mac //p')
    case "$mac" in 00:16:3e:*) ;; *) echo "the DomU's MAC is '$mac'"; return 1 ;; esac
    echo "$mac" >$dir/mac
    [ "$(keelctl xenstore read /local/domain/$d/device/vif/0/mac)" = "$mac" ] ||
        { keelctl xenstore ls /local/domain/$d/device/vif; return 1; }
    [ "$(cat /sys/class/net/vif$d.0/address)" = fe:ff:ff:ff:ff:ff ] ||
        { ip link show vif$d.0; return 1; }
    [ -e /sys/class/net/$br/brif/vif$d.0 ] || { ls /sys/class/net/$br/brif; return 1; }
}
check xen_net.bridged_vif_comes_up_with_a_stable_mac up

# 2. Ping, then a file each way over TCP.
ping_dom0() {
    need_domu || return $?
    wait_for netguest "keel-domu: net ping" 120 || return 1
    has /var/log/keel/netguest.log "keel-domu: net ping ok"
}
check xen_net.domu_pings_dom0 ping_dom0

fetch_from_dom0() {
    need_domu || return $?
    wait_for netguest "keel-domu: net fetched" 300 || return 1
    got=$(tr -d '\r' </var/log/keel/netguest.log | sed -n 's/^keel-domu: net fetched //p')
    [ "$got" = "$(cat $dir/dom0.sum)" ] || { echo "the DomU fetched '$got', Dom0 served $(cat $dir/dom0.sum)"; return 1; }
}
check xen_net.domu_fetches_a_file_from_dom0 fetch_from_dom0

bulk_bridged() { need_domu || return $?; bulk netguest 10.99.0.2; }
check xen_net.bridged_tcp_streams_each_way_verified bulk_bridged

fetch_from_domu() {
    need_domu || return $?
    wait_for netguest "keel-domu: ready" 120 || return 1
    want=$(tr -d '\r' </var/log/keel/netguest.log | sed -n 's/^keel-domu: net blob //p')
    wget -q -O $dir/from-domu http://10.99.0.2:8080/blob || { echo "wget from the DomU failed"; return 1; }
    set -- $(sha256sum <$dir/from-domu)
    [ "$1" = "$want" ] || { echo "Dom0 fetched $1, the DomU served '$want'"; return 1; }
}
check xen_net.dom0_fetches_a_file_from_the_domu fetch_from_domu

# 2b. A second DomU on the same bridge reaches the first.
two_domus() {
    need_domu || return $?
    on_bochs && { echo "a second DomU boot under Bochs: run under QEMU only (time budget)"; return 4; }
    want=$(tr -d '\r' </var/log/keel/netguest.log | sed -n 's/^keel-domu: net blob //p')
    rm -f /var/log/keel/netpeer.log
    cfg netpeer net "vif = [ 'bridge=$br, rate=4Mb/s' ]"
    sed -i 's/keel.run=net/keel.run=net keel.ip=10.99.0.3\/24 keel.peer=10.99.0.2/' $dir/netpeer.cfg
    keelctl create $dir/netpeer.cfg >$out 2>$err || { cat $out $err; return 1; }
    wait_for netpeer "keel-domu: ready" 300 || { keelctl destroy netpeer; return 1; }
    has /var/log/keel/netpeer.log "keel-domu: net ping ok" || { keelctl destroy netpeer; return 1; }
    got=$(tr -d '\r' </var/log/keel/netpeer.log | sed -n 's/^keel-domu: net fetched //p')
    [ "$got" = "$want" ] || { keelctl destroy netpeer; echo "the second DomU fetched '$got', the first served '$want'"; return 1; }
    echo "$(domid_of netpeer)" >$dir/netpeer.domid
}
check xen_net.two_domus_on_one_bridge_reach_each_other two_domus

# 2c. rate= limits what a guest sends: 4Mb/s is 500 kB/s, 25 kB every 50 ms (libxl's form in
# XenStore), at most 128 KiB of unused credit kept: the second DomU's 4 MiB take at least 8 s
# (unlimited, about 0.4 s under QEMU) and at most 15.
rate_limit() {
    need_domu || return $?
    on_bochs && { echo "no second DomU under Bochs (see above)"; return 4; }
    d=$(cat $dir/netpeer.domid 2>/dev/null)
    [ -n "$d" ] || { echo "no second DomU"; return 1; }
    want=$(tr -d '\r' </var/log/keel/netpeer.log | sed -n 's/^keel-domu: net blob //p')
    [ "$(keelctl xenstore read /local/domain/0/backend/vif/$d/0/rate)" = 25000,50000 ] ||
        { keelctl xenstore ls /local/domain/0/backend/vif/$d/0; keelctl destroy netpeer; return 1; }
    t0=$(centis)
    wget -q -O $dir/from-peer http://10.99.0.3:8080/blob; r=$?
    took=$(($(centis) - t0))
    keelctl destroy netpeer
    [ $r = 0 ] || { echo "wget from the second DomU failed"; return 1; }
    set -- $(sha256sum <$dir/from-peer)
    [ "$1" = "$want" ] || { echo "Dom0 fetched $1, the DomU served '$want'"; return 1; }
    [ $took -ge 780 ] || { echo "the rate limit did not hold: $size MiB in $took cs"; return 1; }
    # Nor is it much slower than the rate (a stall, or credit lost).
    [ $took -le 1500 ] || { echo "slower than the rate: $size MiB in $took cs"; return 1; }
}
check xen_net.rate_limits_what_the_guest_sends rate_limit

# 3. A vif attached and detached at run time.
attach_detach() {
    need_domu || return $?
    d=$(domid_of netguest)
    keelctl network-attach netguest "bridge=$br" >$out 2>$err || { cat $out $err; return 1; }
    i=0
    while ! keelctl network-list netguest | awk '$1 == 1 && $5 == 4 { f = 1 } END { exit !f }'; do
        i=$((i + 1)); [ $i -lt 300 ] || { echo "vif 1 not Connected:"; keelctl network-list netguest; return 1; }
        sleep 0.2
    done
    [ -e /sys/class/net/$br/brif/vif$d.1 ] || { ls /sys/class/net/$br/brif; return 1; }
    keelctl network-list --json netguest >$out || return 1
    has $out '"tap": "vif'$d'.1"' || return 1
    if keelctl network-attach netguest "devid=1, bridge=$br" 2>$err; then echo "devid 1 attached twice"; return 1; fi
    has $err "vif 1" || return 1
    if keelctl network-attach netguest bridge=nosuchbr 2>$err; then echo "attached to no bridge"; return 1; fi
    has $err "nosuchbr" || return 1
    if keelctl network-detach netguest 7 2>$err; then echo "detached vif 7"; return 1; fi
    has $err "no vif 7" || return 1
    keelctl network-detach netguest 1 >$out 2>$err || { cat $out $err; return 1; }
    [ ! -e /sys/class/net/vif$d.1 ] || { echo "vif$d.1 is still there"; return 1; }
    for p in /local/domain/0/backend/vif/$d/1 /local/domain/$d/device/vif/1; do
        if keelctl xenstore read $p >/dev/null 2>&1; then echo "$p left in XenStore"; return 1; fi
    done
    [ "$(keelctl network-list netguest | wc -l)" = 2 ] || { keelctl network-list netguest; return 1; }
}
check xen_net.network_attach_and_detach_at_run_time attach_detach

# 4. Destroy: the TAP and the XenStore directories go; the MAC is the same the next time.
destroy_cleans_up() {
    need_domu || return $?
    d=$(domid_of netguest)
    [ -n "$d" ] || { keelctl list; return 1; }
    keelctl destroy netguest || return 1
    i=0
    while [ -e /sys/class/net/vif$d.0 ]; do
        i=$((i + 1)); [ $i -lt 50 ] || { echo "vif$d.0 is still there"; return 1; }
        sleep 0.1
    done
    for p in /local/domain/0/backend/vif/$d /local/domain/$d; do
        if keelctl xenstore read $p >/dev/null 2>&1; then echo "$p left in XenStore"; return 1; fi
    done
    rm -f /var/log/keel/netguest.log
    cfg netguest info "vif = [ 'bridge=$br' ]"
    keelctl create $dir/netguest.cfg >$out 2>$err || { cat $out $err; return 1; }
    d=$(domid_of netguest)
    mac=$(keelctl xenstore read /local/domain/$d/device/vif/0/mac)
    keelctl destroy netguest
    [ "$mac" = "$(cat $dir/mac)" ] || { echo "the MAC was $(cat $dir/mac), now '$mac'"; return 1; }
}
check xen_net.destroy_removes_the_vif_and_the_mac_is_stable destroy_cleans_up

# 5. Routed: Dom0 reaches the DomU by its address; the route goes with it.
routed() {
    need_domu || return $?
    rm -f /var/log/keel/routed.log
    cfg routed "net keel.bulk=$bulk" "vif = [ 'script=vif-route, ip=10.99.1.2' ]"
    sed -i 's/keel.run=net/keel.run=net keel.ip=10.99.1.2\/24 keel.peer=10.99.0.1/' $dir/routed.cfg
    keelctl create $dir/routed.cfg >$out 2>$err || { cat $out $err; return 1; }
    d=$(domid_of routed)
    wait_for routed "keel-domu: net ping" 240 || return 1
    has /var/log/keel/routed.log "keel-domu: net ping ok" || return 1
    [ "$(cat /proc/sys/net/ipv4/conf/vif$d.0/proxy_arp)" = 1 ] || { echo "no proxy ARP on vif$d.0"; return 1; }
    ip route | grep -q "^10.99.1.2 dev vif$d.0" || { ip route; return 1; }
    ping -c 3 -W 10 10.99.1.2 >$out 2>&1 || { cat $out; return 1; }
    bulk routed 10.99.1.2 || return 1
    wait_for routed "keel-domu: ready" 300 || return 1
    want=$(tr -d '\r' </var/log/keel/routed.log | sed -n 's/^keel-domu: net blob //p')
    wget -q -O $dir/from-routed http://10.99.1.2:8080/blob || { echo "wget from the routed DomU failed"; return 1; }
    set -- $(sha256sum <$dir/from-routed)
    [ "$1" = "$want" ] || { echo "Dom0 fetched $1, the DomU served '$want'"; return 1; }
}
check xen_net.routed_vif_dom0_reaches_the_domu_by_its_address routed

# The outside world of the NAT tests: a network namespace over a veth pair (made once).
outside_up() {
    [ -f $dir/ns.pid ] && kill -0 $(cat $dir/ns.pid) 2>/dev/null && return 0
    unshare -n sleep 1800 & echo $! >$dir/ns.pid
    sleep 0.2
    ns=$(cat $dir/ns.pid)
    ip link add kn0 type veth || { echo "cannot create a veth pair"; return 1; }
    peer=$(ip link show kn0 | sed -n 's/.*kn0@\([^:]*\):.*/\1/p')
    ip link set "$peer" name kn1 && ip link set kn1 netns $ns ||
        { echo "cannot move the peer '$peer' into a namespace"; return 1; }
    ip addr add 192.168.77.1/24 dev kn0 && ip link set kn0 up || return 1
    nsenter -t $ns -n sh -c 'ip addr add 192.168.77.2/24 dev kn1 && ip link set kn1 up && ip link set lo up' || return 1
    nsenter -t $ns -n httpd -p 192.168.77.2:8080 -h $dir/www || { echo "httpd in the namespace did not start"; return 1; }
}

outside_down() {
    [ -f $dir/ns.pid ] && kill $(cat $dir/ns.pid) 2>/dev/null
    ip link del kn0 2>/dev/null
    rm -f $dir/ns.pid
}

# NAT without ip= (vif-nat's default), on the routed DomU (so Bochs runs it too: no DomU boot
# of its own): a vif attached at run time gets Xen's address for devid 1,
# 10.(domid/256).(domid%256).2/16, with its gateway 127 above (.129) on Dom0's end and a NAT
# table of its own; the vif's DHCP server gives both and the domain's name to the guest's
# udhcpc (the DomU initramfs's hook puts the address on eth1), reading its broadcasts from
# 0.0.0.0 ahead of the anti-spoof rule, which still drops them (a chain of the test's own
# after it sees none); the guest pings its gateway
# through the vif and Dom0 pings the guest; it fetches a file from the outside world, which
# cannot ping it back; the table and the route go with the vif.
nat_dhcp() {
    need_domu || return $?
    keelctl list | grep -q '^routed ' || { echo "no routed DomU"; return 1; }
    d=$(domid_of routed)
    want=10.$((d / 256)).$((d % 256)).2 gw=10.$((d / 256)).$((d % 256)).129
    keelctl network-attach routed 'script=vif-nat' >$out 2>$err || { cat $out $err; return 1; }
    nft list table ip keel-d$d-vif$d.1 >$out 2>&1 || { cat $out; return 1; }
    has $out masquerade || return 1
    ip addr show vif$d.1 | grep -q "inet $gw/32" || { ip addr show vif$d.1; return 1; }
    i=0
    while ! keelctl network-list routed | awk '$1 == 1 && $5 == 4 { f = 1 } END { exit !f }'; do
        i=$((i + 1)); [ $i -lt 300 ] || { echo "vif 1 not Connected:"; keelctl network-list routed; return 1; }
        sleep 0.2
    done
    # The client's broadcasts from 0.0.0.0, counted before the vif's anti-spoof rule and after.
    nft add table ip keeltest && nft add chain ip keeltest early '{ type filter hook prerouting priority -301; }' &&
        nft add chain ip keeltest late '{ type filter hook prerouting priority 0; }' || return 1
    for c in early late; do
        nft add rule ip keeltest $c iifname vif$d.1 ip saddr 0.0.0.0 udp dport 67 counter || return 1
    done
    seen() { nft list chain ip keeltest $1 | sed -n 's/.*counter packets \([0-9]*\) .*/\1/p'; }
    r=$(guest routed "ip link set eth1 up; udhcpc -i eth1 -f -q -n -t 5 -T 2 2>&1 | grep -e '^lease' -e 'udhcpc:' | tail -n 1") || return 1
    case "$r" in
        "lease eth1 ip=$want/16 router=$gw "*" hostname=routed") ;;
        *) echo "the guest's lease: '$r' (want ip=$want/16 router=$gw hostname=routed)"; return 1 ;;
    esac
    # The server read the DISCOVER and REQUEST (from 0.0.0.0) ahead of Dom0's IP stack, where
    # the anti-spoof rule still dropped them: none reached a later chain (nor a Dom0 socket).
    early=$(seen early) late=$(seen late)
    nft delete table ip keeltest
    [ "${early:-0}" -ge 2 ] && [ "$late" = 0 ] ||
        { echo "of the client's broadcasts $early reached the vif and '$late' passed its anti-spoof rule"; return 1; }
    r=$(guest routed "ping -c 2 -W 5 -I eth1 $gw >/dev/null 2>&1 && echo gateway-ok") || return 1
    [ "$r" = gateway-ok ] || { echo "the guest cannot ping its NAT gateway $gw: '$r'"; return 1; }
    ping -c 2 -W 5 $want >$out 2>&1 || { echo "Dom0 cannot ping $want:"; cat $out; return 1; }
    # Through the NAT vif the guest reaches the outside (masqueraded: the outside has no route
    # back to 10.0.0.0/16) and fetches its file; the outside, even routed towards the guest,
    # does not reach it.
    outside_up || return 1
    ns=$(cat $dir/ns.pid)
    r=$(guest routed "ip route add 192.168.77.2 via $gw dev eth1; timeout 50 wget -q -O - http://192.168.77.2:8080/blob | sha256sum | cut -d' ' -f1") || return 1
    [ "$r" = "$(cat $dir/dom0.sum)" ] || {
        echo "the guest fetched '$r' from the outside through NAT"
        echo "the guest: $(guest routed "ip -o addr | tr '\\n' ' '; ip route | tr '\\n' ' '; ping -c 1 -W 2 192.168.77.2 >/dev/null && echo far-ok")"
        ip addr; ip route
        nft list ruleset
        nsenter -t $ns -n sh -c 'ip addr; ip route; netstat -ltn'; return 1
    }
    nsenter -t $ns -n ip route add $want via 192.168.77.1 || return 1
    # (The outside's ping works: it reaches Dom0.)
    nsenter -t $ns -n ping -c 1 -W 3 192.168.77.1 >$out 2>&1 || { echo "the outside cannot ping Dom0:"; cat $out; return 1; }
    if nsenter -t $ns -n ping -c 2 -W 3 $want >$out 2>&1; then echo "the outside pinged the NAT guest"; return 1; fi
    nsenter -t $ns -n ip route del $want via 192.168.77.1
    keelctl network-detach routed 1 >$out 2>$err || { cat $out $err; return 1; }
    if nft list table ip keel-d$d-vif$d.1 >$out 2>&1; then echo "vif 1's NAT table is still there:"; cat $out; return 1; fi
    ! ip route | grep -q "^$want " || { ip route; return 1; }
}
check xen_net.nat_vif_without_ip_gets_xens_default_address_by_dhcp nat_dhcp

routed_cleanup() {
    need_domu || return $?
    keelctl destroy routed || return 1
    i=0
    while ip route | grep -q '^10.99.1.2 '; do
        i=$((i + 1)); [ $i -lt 50 ] || { echo "the route to 10.99.1.2 is still there:"; ip route; return 1; }
        sleep 0.1
    done
    ! ls /sys/class/net | grep -q '^vif' || { ls /sys/class/net; return 1; }
}
check xen_net.routed_vif_route_gone_after_destroy routed_cleanup

# 6. NAT: the DomU reaches the outside world, which cannot reach it.
nat() {
    need_domu || return $?
    on_bochs && { echo "a NAT DomU boot under Bochs: run under QEMU only (time budget)"; return 4; }
    outside_up || return 1
    rm -f /var/log/keel/natguest.log
    cfg natguest "net keel.bulk=$bulk" "vif = [ 'script=vif-nat, ip=10.99.2.2' ]"
    sed -i 's/keel.run=net/keel.run=net keel.ip=10.99.2.2\/24 keel.peer=10.99.2.1 keel.far=192.168.77.2/' $dir/natguest.cfg
    keelctl create $dir/natguest.cfg >$out 2>$err || { cat $out $err; return 1; }
    d=$(domid_of natguest)
    nft list table ip keel-d$d-vif$d.0 >$out 2>&1 || { cat $out; return 1; }
    has $out masquerade || return 1
    # What comes back must belong to a connection opened through this vif (its mark).
    has $out "ct mark set" || return 1
    ip addr show vif$d.0 | grep -q 'inet 10.99.2.1/32' || { ip addr show vif$d.0; return 1; }
    bulk natguest 10.99.2.2 || return 1
    wait_for natguest "keel-domu: ready" 400 || return 1
    for l in "net ping ok" "net far ping ok" "net far fetched $(cat $dir/dom0.sum)"; do
        has /var/log/keel/natguest.log "keel-domu: $l" || return 1
    done
}
check xen_net.nat_domu_reaches_the_outside_world nat

nat_closed() {
    need_domu || return $?
    on_bochs && { echo "no NAT DomU under Bochs (see above)"; return 4; }
    keelctl list | grep -q '^natguest ' || { echo "no NAT DomU"; return 1; }
    ns=$(cat $dir/ns.pid)
    # Dom0 reaches the DomU (its own traffic is not forwarded) ...
    ping -c 2 -W 5 10.99.2.2 >$out 2>&1 || { echo "Dom0 cannot ping the NAT DomU:"; cat $out; return 1; }
    # ... the outside does not, even with a route to it.
    nsenter -t $ns -n ip route add 10.99.2.0/24 via 192.168.77.1 || return 1
    # (The outside's ping works: it reaches Dom0.)
    nsenter -t $ns -n ping -c 1 -W 3 192.168.77.1 >$out 2>&1 || { echo "the outside cannot ping Dom0:"; cat $out; return 1; }
    if nsenter -t $ns -n ping -c 2 -W 3 10.99.2.2 >$out 2>&1; then echo "the outside pinged the NAT DomU"; return 1; fi
    # (busybox 1.35's wget -T crashes: timeout(1) bounds it.) Dom0 fetches, the outside not.
    timeout 30 wget -q -O $dir/from-nat http://10.99.2.2:8080/blob ||
        { echo "Dom0 cannot fetch from the NAT DomU"; return 1; }
    if nsenter -t $ns -n timeout 5 wget -q -O $dir/leak http://10.99.2.2:8080/blob 2>/dev/null; then
        echo "the outside fetched from the NAT DomU"; return 1
    fi
}
check xen_net.nat_domu_is_not_reachable_from_outside nat_closed

# The NAT DomU speaks only from its own address: pings it sends from another one (an address
# it adds to eth0) are dropped by its vif's rule before Dom0 routes them, which counts them,
# and get no answer; from its own address they still do.
nat_spoof() {
    need_domu || return $?
    on_bochs && { echo "no NAT DomU under Bochs (see above)"; return 4; }
    keelctl list | grep -q '^natguest ' || { echo "no NAT DomU"; return 1; }
    d=$(domid_of natguest)
    drops() { nft list table ip keel-d$d-vif$d.0 | sed -n "s/.*iifname \"vif$d.0\" ip saddr != 10.99.2.2 counter packets \([0-9]*\) .*drop.*/\1/p"; }
    before=$(drops)
    [ -n "$before" ] || { echo "no anti-spoof rule:"; nft list table ip keel-d$d-vif$d.0; return 1; }
    r=$(guest natguest "ip addr add 10.99.2.77/32 dev eth0; ping -c 3 -W 2 -I 10.99.2.77 192.168.77.2 >/dev/null 2>&1 && echo answered; ip addr del 10.99.2.77/32 dev eth0; ping -c 1 -W 5 192.168.77.2 >/dev/null 2>&1 && echo own-ok") || return 1
    after=$(drops)
    [ "$r" = own-ok ] || { echo "the guest's pings: '$r' (want only own-ok)"; return 1; }
    [ $((after - before)) -ge 3 ] || { echo "the rule counted $((after - before)) spoofed packets, not 3"; nft list table ip keel-d$d-vif$d.0; return 1; }
}
check xen_net.nat_vif_drops_what_the_guest_sends_from_another_address nat_spoof

# A vif that takes the address of one gone does not inherit its connections: the DomU opens a
# TCP connection to the outside through vif 0 and gets the first line; vif 0 is detached and a
# new one (devid 0 again, the same name and address) attached, and the guest puts its address
# on it; only then does the outside send its second line, which still matches the old
# connection in Dom0's conntrack (which maps it to the guest) but not the new vif's mark: the
# new vif's drop rule counts it and the guest never sees it. A connection the guest opens
# through the new vif is answered.
nat_stale() {
    need_domu || return $?
    on_bochs && { echo "no NAT DomU under Bochs (see above)"; return 4; }
    keelctl list | grep -q '^natguest ' || { echo "no NAT DomU"; return 1; }
    ns=$(cat $dir/ns.pid) d=$(domid_of natguest)
    rm -f $dir/go
    nsenter -t $ns -n sh -c "{ echo first; while [ ! -e $dir/go ]; do sleep 0.2; done; echo second; sleep 20; } | nc -l -p 7777 >/dev/null 2>&1" &
    talker=$!
    sleep 0.5
    r=$(guest natguest "{ sleep 90 | nc 192.168.77.2 7777; } >/tmp/late 2>&1 </dev/null & sleep 2; tr '\\n' ' ' </tmp/late") || return 1
    [ "$r" = "first " ] || { echo "the guest's connection got '$r'"; return 1; }
    old=$(guest natguest "cat /sys/class/net/eth0/ifindex") || return 1
    keelctl network-detach natguest 0 >$out 2>$err || { cat $out $err; return 1; }
    keelctl network-attach natguest 'script=vif-nat, ip=10.99.2.2' >$out 2>$err || { cat $out $err; return 1; }
    nft list table ip keel-d$d-vif$d.0 >/dev/null 2>&1 || { echo "no table for the new vif 0"; return 1; }
    # The new eth0 (another ifindex: the old one may still be going).
    r=$(guest natguest "i=0; while ! grep -qvx $old /sys/class/net/eth0/ifindex 2>/dev/null && [ \$i -lt 30 ]; do sleep 1; i=\$((i+1)); done; ip link set eth0 up && ip addr add 10.99.2.2/24 dev eth0 && ip route add default via 10.99.2.1 && echo up") || return 1
    [ "$r" = up ] || { echo "the guest's new eth0: '$r'"; return 1; }
    touch $dir/go
    # The second line and the outside's resends of it meet the new vif's drop rule.
    i=0 dropped=0
    while [ $i -lt 100 ]; do
        dropped=$(nft list table ip keel-d$d-vif$d.0 | sed -n "s/.*oifname \"vif$d.0\" counter packets \([0-9]*\) .*drop.*/\1/p")
        [ "${dropped:-0}" -gt 0 ] && break
        sleep 0.1; i=$((i + 1))
    done
    [ "${dropped:-0}" -gt 0 ] || { echo "the second line never reached the new vif's rules:"; nft list table ip keel-d$d-vif$d.0; return 1; }
    sleep 2
    r=$(guest natguest "tr '\\n' ' ' </tmp/late") || return 1
    [ "$r" = "first " ] || { echo "the old connection reached the guest through the new vif: '$r'"; return 1; }
    kill $talker 2>/dev/null
    r=$(guest natguest "wget -q -O - http://192.168.77.2:8080/blob | sha256sum | cut -d' ' -f1") || return 1
    [ "$r" = "$(cat $dir/dom0.sum)" ] || {
        echo "a new connection through the new vif got '$r'"
        echo "the guest: $(guest natguest "ip -o addr | tr '\\n' ' '; ip route | tr '\\n' ' '; ping -c 1 -W 2 10.99.2.1 >/dev/null && echo gateway-ok; ping -c 1 -W 2 192.168.77.2 >/dev/null && echo far-ok")"
        ip addr show vif$d.0; ip route; nft list table ip keel-d$d-vif$d.0; return 1
    }
}
check xen_net.nat_vif_does_not_inherit_old_connections nat_stale

nat_cleanup() {
    need_domu || return $?
    on_bochs && { echo "no NAT DomU under Bochs (see above)"; return 4; }
    d=$(domid_of natguest)
    [ -n "$d" ] || { keelctl list; return 1; }
    # A NAT vif attached at run time has a table of its own, gone when it is detached.
    keelctl network-attach natguest 'script=vif-nat, ip=10.99.3.2' >$out 2>$err || { cat $out $err; return 1; }
    nft list table ip keel-d$d-vif$d.1 >$out 2>&1 || { cat $out; return 1; }
    i=0
    while ! keelctl network-list natguest | awk '$1 == 1 && $5 == 4 { f = 1 } END { exit !f }'; do
        i=$((i + 1)); [ $i -lt 300 ] || { echo "vif 1 not Connected:"; keelctl network-list natguest; return 1; }
        sleep 0.2
    done
    keelctl network-detach natguest 1 >$out 2>$err || { cat $out $err; return 1; }
    if nft list table ip keel-d$d-vif$d.1 >$out 2>&1; then echo "vif 1's NAT table is still there"; return 1; fi
    # A keel-domd that cannot answer is killed by destroy, which then removes the tables it
    # left.
    pid=""
    for p in $(pidof keel-domd); do
        tr '\0' ' ' </proc/$p/cmdline | grep -q natguest.cfg && pid=$p
    done
    [ -n "$pid" ] || { echo "no keel-domd for natguest"; return 1; }
    kill -STOP $pid
    keelctl destroy natguest >$out 2>$err || { cat $out $err; return 1; }
    has $err "removed nftables table keel-d$d-vif$d.0" || return 1
    outside_down
    i=0
    while [ -e /sys/class/net/vif$d.0 ]; do
        i=$((i + 1)); [ $i -lt 50 ] || { echo "vif$d.0 is still there"; return 1; }
        sleep 0.1
    done
    if nft list table ip keel-d$d-vif$d.0 >$out 2>&1; then echo "the NAT table is still there:"; cat $out; return 1; fi
    ! ip route | grep -q '^10.99.2.2 ' || { ip route; return 1; }
}
check xen_net.nat_rules_gone_after_destroy nat_cleanup

# 7. Refusals: no such bridge, routed without an address, NAT with no default address for
# its devid, unknown scripts; nothing
# left behind.
refusals() {
    need_domu || return $?
    cfg badnet info "vif = [ 'bridge=nosuchbr' ]"
    if keelctl create $dir/badnet.cfg >$out 2>$err; then keelctl destroy badnet; echo "created"; return 1; fi
    has $err "vif 0" || return 1
    has $err "nosuchbr" || return 1
    # vif-nat's default address has room for devids up to 126 only.
    cfg badnet info "vif = [ 'script=vif-nat, devid=127' ]"
    if keelctl create $dir/badnet.cfg >$out 2>$err; then keelctl destroy badnet; echo "created"; return 1; fi
    has $err "vif 127: script=vif-nat without ip=" || return 1
    cfg badnet info "vif = [ 'script=vif-nat, ip=10.99.0.50' ]"
    if keelctl create $dir/badnet.cfg >$out 2>$err; then keelctl destroy badnet; echo "created"; return 1; fi
    has $err "overlaps $br's 10.99.0.1/24" || return 1
    cfg badnet info "vif = [ 'script=/etc/xen/scripts/my-vif' ]"
    if keelctl create $dir/badnet.cfg >$out 2>$err; then keelctl destroy badnet; echo "created"; return 1; fi
    has $err "runs no hotplug scripts" || return 1
    cfg badnet info "vif = [ 'script=vif-route' ]"
    if keelctl create $dir/badnet.cfg >$out 2>$err; then keelctl destroy badnet; echo "created"; return 1; fi
    has $err "needs the guest's address (ip=)" || return 1
    ! keelctl list | grep -q '^badnet ' || { keelctl list; return 1; }
    ! ls /sys/class/net | grep -q '^vif' || { ls /sys/class/net; return 1; }
}
check xen_net.bad_vifs_are_refused_by_name refusals

outside_down
killall httpd 2>/dev/null
ip link set $br down 2>/dev/null && brctl delbr $br 2>/dev/null
tap_done
