#!/usr/bin/env bash
# fsck's throughput: files/s and MB/s over a tree made through a mount
# (FILES files, a mix of small and 64 KiB ones, in 100 directories), page
# cache warm (a second run) and cold (caches dropped before it).
# Usage: bash scripts/bench-fsck.sh [FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --quiet --bin kmsfs
K="$PWD/target/release/kmsfs"
N="${1:-8000}"
W=$(mktemp -d /var/tmp/kmsfs-bench-fsck.XXXXXX)
export KMSFS_HOME="$W/kms" KMSFS_KEY_FILE="$W/root.key"
head -c 32 /dev/urandom > "$KMSFS_KEY_FILE"
cleanup() { "$K" unmount "$W/m" 2>/dev/null || umount -l "$W/m" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/m"
"$K" init "$W/c" >/dev/null 2>&1
"$K" mount "$W/c" "$W/m" 2>/dev/null
python3 - "$W/m" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range(100):
    os.mkdir(f"{root}/d{d}")
for i in range(n):
    size = 65536 if i % 10 == 0 else 1 + (i * 7919) % 8192
    with open(f"{root}/d{i % 100}/f{i}", "wb") as f:
        f.write(os.urandom(size))
PY
"$K" unmount "$W/m"
echo "== fsck of $N files, page cache warm"
"$K" fsck "$W/c" >/dev/null
"$K" fsck "$W/c" | tail -1
echo "== page cache cold"
sync; echo 3 > /proc/sys/vm/drop_caches
"$K" fsck "$W/c" | tail -1
