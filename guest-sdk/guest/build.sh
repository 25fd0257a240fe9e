#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Builds the Linux guest image: now scripts/guest-image (see there).
#
#   guest-sdk/guest/build.sh [OUT]      (default OUT: .cache/guest)
exec "$(dirname "$0")/../../scripts/guest-image" "$@" >/dev/null
