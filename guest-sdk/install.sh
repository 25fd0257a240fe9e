#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Builds and installs the Shoal C library, header and pkg-config file.
#   guest-sdk/install.sh PREFIX        (e.g. /usr/local or $HOME/.local)
#   then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc prog.c $(pkg-config --cflags --libs shoal) -fopenmp
# SHOAL_STATIC=1 installs only the static library (programs then need no
# LD_LIBRARY_PATH); PROFILE=dev builds unoptimised.
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi
prefix=$1
here=$(cd "$(dirname "$0")" && pwd)
profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-$here/../target}
echo "building guest-sdk ($profile)..."
(cd "$here" && cargo build -p guest-sdk --profile "$profile" --lib)
case $profile in dev) dir=debug ;; *) dir=$profile ;; esac
out=$target/$dir
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n 1)
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0644 "$here/include/shoal.h" "$prefix/include/shoal.h"
install -m 0644 "$out/libshoal.a" "$prefix/lib/libshoal.a"
if [ "${SHOAL_STATIC:-0}" != 1 ]; then
    install -m 0755 "$out/libshoal.so" "$prefix/lib/libshoal.so"
fi
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|${version:-0.1.0}|" \
    "$here/shoal.pc.in" >"$prefix/lib/pkgconfig/shoal.pc"
echo "installed to $prefix (header, libshoal, lib/pkgconfig/shoal.pc)"
