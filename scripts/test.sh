#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, CLI tests through the
# real binary, and real FUSE mounts (these need /dev/fuse and root). Every
# test binary runs even when an earlier one fails, and the closing line
# counts them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh curl logrotate gzip
# awscli, boto3 and moto for the KMS server tests, in target/pyenv.
bash scripts/pydeps.sh
if [ ! -e /dev/fuse ]; then
  echo "/dev/fuse is missing: the mount tests will fail; load the fuse module (modprobe fuse)" >&2
fi
# The abort files under fusectl let the tests' watchdog end a hung mount.
if [ -d /sys/fs/fuse/connections ] && ! grep -q fusectl /proc/mounts; then
  mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
