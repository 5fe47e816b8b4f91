#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, CLI tests through the
# real binary, and real FUSE mounts (these need /dev/fuse and root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [ ! -e /dev/fuse ]; then
  echo "/dev/fuse is missing: the mount tests will fail; load the fuse module (modprobe fuse)" >&2
fi
# The abort files under fusectl let the tests' watchdog end a hung mount.
if [ -d /sys/fs/fuse/connections ] && ! grep -q fusectl /proc/mounts; then
  mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
fi
cargo test --locked "$@"
