#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Builds a Linux guest image for the SDK's in-guest tests (QEMU -accel tcg now,
# Shoal on hardware hosts later): Debian's cloud kernel, our guest driver built
# against its headers, busybox, and static SDK programs in an initramfs whose
# /init runs the command given as shoal.run=prog,arg,... and reports
# "SHOAL-EXIT: <status>" on the console.
#
#   guest-sdk/guest/build.sh [OUT]      (default OUT: .cache/guest)
#
# Downloads go through apt-get (signature- and checksum-verified by apt) and
# are cached in OUT/debs. The kernel is pinned; when the archive no longer has
# the pinned version, the current cloud kernel with matching headers is used
# and the script says which.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/.cache/guest}
pin=${SHOAL_GUEST_KERNEL:-6.1.0-56}
mkdir -p "$out/debs"
out=$(cd "$out" && pwd)
step() { echo "guest-image: $*"; }

for tool in apt-get apt-cache dpkg make gcc-12 cc gzip; do
    command -v "$tool" >/dev/null || { echo "guest-image: missing $tool" >&2; exit 1; }
done

# 1. Kernel version: the pin, else the current cloud kernel.
if apt-cache show "linux-image-$pin-cloud-amd64" >/dev/null 2>&1; then
    kver=$pin
else
    kver=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/.*Depends: linux-image-\(.*\)-cloud-amd64$/\1/p' | head -n 1)
    [ -n "$kver" ] || { echo "guest-image: no cloud kernel in the archive" >&2; exit 1; }
    step "pinned kernel $pin is gone from the archive; using $kver"
fi
step "kernel $kver-cloud-amd64"

# 2. Packages (cached).
cd "$out/debs"
need=""
for pkg in "linux-image-$kver-cloud-amd64" "linux-headers-$kver-cloud-amd64" \
    "linux-headers-$kver-common" linux-kbuild-6.1 busybox-static; do
    ls "${pkg}"_*.deb >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
    step "downloading$need"
    apt-get download $need 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
fi
for pkg in "linux-image-$kver-cloud-amd64" "linux-headers-$kver-cloud-amd64" \
    "linux-headers-$kver-common" linux-kbuild-6.1 busybox-static; do
    ls "${pkg}"_*.deb >/dev/null 2>&1 || { echo "guest-image: $pkg missing" >&2; exit 1; }
done

# 3. Unpack kernel, headers and busybox.
root=$out/root
if [ ! -e "$root/.done-$kver" ]; then
    step "unpacking"
    rm -rf "$root"
    mkdir -p "$root"
    for deb in ./linux-image-"$kver"-cloud-amd64_*.deb ./linux-headers-"$kver"-*.deb \
        ./linux-kbuild-6.1_*.deb ./busybox-static_*.deb; do
        dpkg -x "$deb" "$root"
    done
    # The headers' Makefile includes the common tree by absolute path.
    sed -i "s|include /usr/src/|include $root/usr/src/|" \
        "$root/usr/src/linux-headers-$kver-cloud-amd64/Makefile"
    touch "$root/.done-$kver"
fi
kernel=$root/boot/vmlinuz-$kver-cloud-amd64

# 4. The guest driver.
step "building the guest driver"
rm -rf "$out/driver"
cp -r "$repo/guest-sdk/driver" "$out/driver"
make -s -C "$out/driver" KDIR="$root/usr/src/linux-headers-$kver-cloud-amd64" >/dev/null

# 5. Static SDK programs.
step "building static SDK programs (Rust example, C OpenMP example)"
target=$out/target
(cd "$repo" && CARGO_TARGET_DIR=$target RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release -p guest-sdk --lib --example histogram \
    --target x86_64-unknown-linux-gnu)
rel=$target/x86_64-unknown-linux-gnu/release
cc -static -O2 -fopenmp -I "$repo/guest-sdk/include" "$repo/guest-sdk/examples/c/jacobi.c" \
    "$rel/libshoal.a" -lpthread -ldl -lm -o "$out/jacobi" 2>&1 |
    grep -v "statically linked applications requires at runtime\|in function\|^collect2" || true

# 6. Initramfs.
step "building the initramfs"
fs=$out/rootfs
rm -rf "$fs"
mkdir -p "$fs/bin" "$fs/proc" "$fs/sys" "$fs/dev" "$fs/tmp"
cp "$root/bin/busybox" "$fs/bin/"
cp "$out/driver/shoal_ivshmem.ko" "$fs/"
cp "$rel/examples/histogram" "$out/jacobi" "$fs/"
cat >"$fs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
run=""
for arg in $(cat /proc/cmdline); do
    case $arg in
        shoal.run=*) run=$(echo "${arg#shoal.run=}" | tr ',' ' ') ;;
        shoal.driver=1) insmod /shoal_ivshmem.ko ;;
        shoal.env=*) export $(echo "${arg#shoal.env=}" | tr ',' ' ') ;;
    esac
done
echo "SHOAL-RUN: $run"
$run
echo "SHOAL-EXIT: $?"
poweroff -f
INIT
chmod +x "$fs/init"
(cd "$fs" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$out/initrd.gz")
ln -sf "$kernel" "$out/vmlinuz"
step "done: $out/vmlinuz $out/initrd.gz ($(du -h "$out/initrd.gz" | cut -f1))"
