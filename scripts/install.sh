#!/usr/bin/env bash
# Installs a built kmsfs for the whole machine (as root): the binary in
# /usr/local/bin, the mount helper /sbin/mount.fuse.kmsfs (a link to it, for
# /etc/fstab and `mount -t fuse.kmsfs`), the systemd unit template
# kmsfs@.service, bash completions, man pages and the README.
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
# Completions and man pages, made from the binary's own help.
install -d /usr/share/bash-completion/completions /usr/local/share/man/man1
/usr/local/bin/kmsfs completions bash > /usr/share/bash-completion/completions/kmsfs
/usr/local/bin/kmsfs man /usr/local/share/man/man1
chmod 0700 /etc/kmsfs
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed /usr/local/bin/kmsfs, /sbin/mount.fuse.kmsfs, /etc/systemd/system/kmsfs@.service, bash completions and man pages (man kmsfs)" >&2
