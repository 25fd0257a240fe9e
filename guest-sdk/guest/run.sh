#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Runs the SDK examples in two Linux guests (QEMU -accel tcg, q35, joined to a
# Shoal group through ivshmem-doorbell) plus a host peer, once with the guest
# driver's interrupts and once driverless (spinning with backoff), and checks
# each result against its single-process reference.
#
#   guest-sdk/guest/run.sh [OUT]        (after scripts/guest-image; default OUT: .cache/guest)
#
# tests/sdk_linux.rs checks the Jacobi scenarios in CI; scripts/demo is the
# guided tour.
#
# Needs the shoal binary (SHOAL=path, default target/release/shoal) and
# qemu-system-x86_64.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$(cd "${1:-$repo/.cache/guest}" && pwd)
shoal=${SHOAL:-$repo/target/release/shoal}
host_hist=$out/histogram
sock=$out/group.sock
failed=0

now_ms() { echo $(($(date +%s%N) / 1000000)); }

guest() { # name, kernel args
    timeout 300 qemu-system-x86_64 -machine q35 -accel tcg,thread=multi -cpu qemu64 \
        -smp 2 -m 512 -nographic -no-reboot \
        -kernel "$out/vmlinuz" -initrd "$out/initrd.gz" \
        -append "console=ttyS0 reboot=k panic=-1 quiet $2" \
        -chardev socket,path="$sock",id=iv -device ivshmem-doorbell,chardev=iv,vectors=1 \
        >"$out/$1.log" 2>&1
}

scenario() { # title, guest kernel args, host command, success marker
    rm -f "$sock" "$sock.ext"
    "$shoal" group serve --name sdk-demo --socket "$sock" --size 16M >"$out/server.log" 2>&1 &
    server=$!
    i=0
    while [ ! -S "$sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    start=$(now_ms)
    guest g1 "$2" &
    g1=$!
    guest g2 "$2" &
    g2=$!
    SHOAL_SOCKET=$sock $3 >"$out/host.log" 2>&1 || true
    wait $g1 || true
    wait $g2 || true
    kill $server 2>/dev/null || true
    wait $server 2>/dev/null || true
    took=$(($(now_ms) - start))
    ok_guests=$(cat "$out/g1.log" "$out/g2.log" | grep -c 'SHOAL-EXIT: 0' || true)
    if grep -q "$4" "$out/host.log" && [ "$ok_guests" = 2 ]; then
        echo "PASS  $1  (${took} ms, two guest boots included)"
    else
        echo "FAIL  $1"
        failed=1
    fi
    grep -h "histogram:\|jacobi:" "$out/g1.log" "$out/g2.log" "$out/host.log" | sed 's/^/      /'
}

[ -x "$shoal" ] || { echo "run: build the shoal binary first (cargo build --release -p shoal)" >&2; exit 1; }
echo "run: 2 QEMU TCG guests (q35, 2 vCPUs) + 1 host peer per scenario"
scenario "histogram, guest driver (MSI-X)" "shoal.run=/histogram,member,3 shoal.driver=1" \
    "$host_hist member 3" "match the single-process reference"
scenario "histogram, driverless (polling)" "shoal.run=/histogram,member,3" \
    "$host_hist member 3" "match the single-process reference"
scenario "OpenMP jacobi, guest driver" \
    "shoal.run=/jacobi,3,128,30 shoal.driver=1 shoal.env=OMP_NUM_THREADS=2,OMP_WAIT_POLICY=passive" \
    "env OMP_WAIT_POLICY=passive $out/jacobi 3 128 30" "matches the single-process reference"
exit $failed
