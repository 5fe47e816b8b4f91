#!/usr/bin/env bash
# Sets up and mounts a demo encrypted directory on an embedded KMS:
#   $DEMO/plain   the mountpoint: read and write plaintext here
#   $DEMO/cipher  what reaches the disk: one encrypted file per file
#   $DEMO/kms     the KMS home: sealed keystore + audit log
# DEMO defaults to /tmp/kmsfs-demo. Unmount with: kmsfs unmount $DEMO/plain
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
echo "== building kmsfs (release; about a minute the first time)" >&2
cargo build --release --locked
KMSFS="$PWD/target/release/kmsfs"
# Put kmsfs where the commands it prints will find it.
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/install.sh "$KMSFS"
  KMSFS=/usr/local/bin/kmsfs
fi
DEMO="${DEMO:-/tmp/kmsfs-demo}"
mkdir -p "$DEMO/plain"
export KMSFS_HOME="$DEMO/kms"
# The demo seals the keystore with a random key file so that it runs
# unattended; for real use give a passphrase (prompt, --passphrase-file or
# --extpass) and keep it safe.
export KMSFS_KEY_FILE="$DEMO/root.key"
[ -s "$KMSFS_KEY_FILE" ] || (umask 077 && head -c 32 /dev/urandom > "$KMSFS_KEY_FILE")
[ -f "$DEMO/cipher/kmsfs.conf" ] || "$KMSFS" init "$DEMO/cipher"
if ! grep -q " $DEMO/plain " /proc/self/mountinfo; then
  "$KMSFS" mount "$DEMO/cipher" "$DEMO/plain"
fi
echo "Hello from kmsfs, $(date -u)" > "$DEMO/plain/hello.txt"
mkdir -p "$DEMO/plain/projects" && cp Cargo.toml "$DEMO/plain/projects/Cargo.toml"
echo
echo "== plaintext at the mountpoint ($DEMO/plain)"
ls -lR "$DEMO/plain"
cat "$DEMO/plain/hello.txt"
echo
echo "== ciphertext in the cipherdir ($DEMO/cipher)"
ls -la "$DEMO/cipher"
od -A d -t x1z -N 96 "$DEMO/cipher/hello.txt"
echo
echo "== the last key uses, from the audit log ($KMSFS_HOME/audit.log)"
"$KMSFS" audit show --table | tail -n 5
echo
echo "Mounted. Try: KMSFS_HOME=$KMSFS_HOME $KMSFS audit show --path hello.txt --table"
echo "Unmount:   $KMSFS unmount $DEMO/plain"
echo "Remount:   KMSFS_HOME=$KMSFS_HOME KMSFS_KEY_FILE=$KMSFS_KEY_FILE $KMSFS mount $DEMO/cipher $DEMO/plain"
