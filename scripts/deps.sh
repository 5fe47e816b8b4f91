#!/usr/bin/env bash
# Installs the Debian packages kmsfs and its tests use, if missing:
# fuse3 (fusermount3 for non-root mounts), rsync, attr, acl and git
# (backup-tool, xattr, ACL and hard-link tests), util-linux's flock, runuser
# and losetup (test users, the failing-disk tests), e2fsprogs (mkfs.ext4,
# e2fsck) and python3 (crash workloads); the tests add curl, logrotate and
# gzip (a real logrotate config rotating a running mount's audit log).
# Needs root (or sudo) only when something is missing. Waits for another apt
# or dpkg process to let go of its lock instead of failing at once, as a
# set-up script on a busy machine must.
set -euo pipefail
need=()
for p in fuse3 rsync attr acl git util-linux e2fsprogs python3 "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]} (waiting up to 10 minutes if another apt holds its lock)" >&2
  lock=(-o DPkg::Lock::Timeout=600)
  # apt-get update takes the lists lock, which DPkg::Lock::Timeout does not
  # cover on every apt version: retry it while another apt runs.
  for i in $(seq 1 60); do
    if $sudo apt-get "${lock[@]}" update -qq; then break; fi
    [ "$i" -eq 60 ] && { echo "apt-get update kept failing; is another apt stuck?" >&2; exit 1; }
    echo "apt-get update failed (another apt running?); retrying in 10 s" >&2
    sleep 10
  done
  DEBIAN_FRONTEND=noninteractive $sudo apt-get "${lock[@]}" install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
