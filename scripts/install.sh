#!/usr/bin/env bash
# Installs a built kmsfs for the whole machine (as root): the binary in
# /usr/local/bin, the mount helper /sbin/mount.fuse.kmsfs (a link to it, for
# /etc/fstab and `mount -t fuse.kmsfs`), the systemd unit template
# kmsfs@.service and the README as its documentation.
# Usage: bash scripts/install.sh [BINARY]   (default: target/release/kmsfs)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/kmsfs}"
[ -x "$bin" ] || { echo "no kmsfs binary at $bin: build it first (cargo build --release)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "install.sh installs for the whole machine: run it as root" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/kmsfs
ln -sfn /usr/local/bin/kmsfs /sbin/mount.fuse.kmsfs
install -d /etc/systemd/system /usr/local/share/doc/kmsfs /etc/kmsfs
install -m 0644 contrib/systemd/kmsfs@.service /etc/systemd/system/kmsfs@.service
install -m 0644 README.md /usr/local/share/doc/kmsfs/README.md
chmod 0700 /etc/kmsfs
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed /usr/local/bin/kmsfs, /sbin/mount.fuse.kmsfs and /etc/systemd/system/kmsfs@.service" >&2
