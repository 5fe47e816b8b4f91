#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, CLI tests through the
# real binary, and real FUSE mounts (these need /dev/fuse and root), then the
# mount tests a second time over FUSE-over-io_uring. Every
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
# The mount tests once more with FUSE over io_uring on (enable_uring=Y and
# KMSFS_IO_URING=auto for every mount; tests/mount_io_uring.rs switches the
# parameter itself). The parameter is put back as it was. mount_crash_ops
# runs here too since the torn-write repair: ten whole runs of it over the
# rings passed after it (README).
uring=/sys/module/fuse/parameters/enable_uring
if [ -w "$uring" ] && [ -z "${KMSFS_TEST_NO_URING:-}" ]; then
  was=$(cat "$uring")
  trap 'echo "$was" > "$uring"; rm -f "$log"' EXIT
  echo Y > "$uring"
  echo "== the mount tests again over FUSE-over-io_uring (enable_uring=Y; KMSFS_TEST_NO_URING=1 skips) ==" >&2
  mounts=()
  for f in tests/mount_*.rs; do
    b=$(basename "$f" .rs)
    [ "$b" = mount_io_uring ] || mounts+=(--test "$b")
  done
  KMSFS_IO_URING=auto cargo test --locked --no-fail-fast "${mounts[@]}" "$@" 2>&1 | tee -a "$log" || status=$?
  echo "$was" > "$uring"
elif [ ! -e "$uring" ]; then
  echo "this kernel has no FUSE over io_uring ($uring is missing): the ring pass is skipped and tests/mount_io_uring.rs fails" >&2
fi
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
