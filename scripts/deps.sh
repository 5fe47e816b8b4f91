#!/usr/bin/env bash
# Installs the Debian packages kmsfs and its tests use, if missing:
# fuse3 (fusermount3 for non-root mounts), rsync and attr (backup-tool and
# xattr tests). Needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
for p in fuse3 rsync attr "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
