#!/usr/bin/env bash
# What a remote KMS costs each open: opens/s through three kmsfs mounts of
# 200 small files, measured alternately: keys in the embedded KMS, keys
# behind `kmsfs kms serve` on loopback without the data-key cache, and the
# same with --key-cache-seconds 5.
# Then the first opens of a whole tree (the first 8,000 files of the cargo
# registry, as bench.sh uses): every file read once after a fresh mount and
# a cold page cache, so no key is cached and each open is a round trip
# unless --key-readahead unwrapped it ahead.
# Usage: bash scripts/bench-remote.sh [ROUNDS] [SECONDS]   (root: drop_caches)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --quiet --bin kmsfs --example open_bench
K="$PWD/target/release/kmsfs"
B="$PWD/target/release/examples/open_bench"
ROUNDS="${1:-5}"; SECS="${2:-3}"
W=$(mktemp -d /tmp/kmsfs-bench-remote.XXXXXX)
export KMSFS_KEY_FILE="$W/root.key"
head -c 32 /dev/urandom > "$KMSFS_KEY_FILE"
SERVER=""
cleanup() {
  for m in "$W"/m*; do "$K" unmount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
# The embedded KMS.
KMSFS_HOME="$W/local" "$K" init "$W/ca" >/dev/null
# The served KMS, its key and an access key.
srv=$(KMSFS_HOME="$W/server" "$K" kms create-key --query KeyMetadata.KeyId --output text 2>/dev/null)
ak=$(KMSFS_HOME="$W/server" "$K" kms create-access-key --principal uid:0)
export AWS_ACCESS_KEY_ID=$(echo "$ak" | python3 -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["AccessKeyId"])')
export AWS_SECRET_ACCESS_KEY=$(echo "$ak" | python3 -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["SecretAccessKey"])')
KMSFS_HOME="$W/server" "$K" kms serve --listen 127.0.0.1:0 > "$W/serve.out" 2>/dev/null &
SERVER=$!
for i in $(seq 50); do grep -q serving "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/.* on \(http:.*\)/\1/p' "$W/serve.out" | head -1)
KMSFS_HOME="$W/state" "$K" init "$W/cb" --kms-endpoint "$URL" --key-id "$srv" >/dev/null
mkdir -p "$W/ma" "$W/mb" "$W/mc"
KMSFS_HOME="$W/local" "$K" mount "$W/ca" "$W/ma" 2>/dev/null
KMSFS_HOME="$W/state" "$K" mount "$W/cb" "$W/mb" 2>/dev/null
for i in $(seq 1 200); do echo "file $i" > "$W/mb/f$i"; done
"$K" unmount "$W/mb"
for i in $(seq 1 200); do echo "file $i" > "$W/ma/f$i"; done
KMSFS_HOME="$W/state" "$K" mount "$W/cb" "$W/mb" --key-cache-seconds 0 2>/dev/null
# The same cipherdir, mounted again elsewhere with the cache, needs a copy.
cp -a "$W/cb" "$W/cc"
KMSFS_HOME="$W/state" "$K" mount "$W/cc" "$W/mc" --key-cache-seconds 5 2>/dev/null || {
  echo "the cached mount failed" >&2; exit 1; }
ra=(); rb=(); rc=()
for r in $(seq "$ROUNDS"); do
  ra+=("$("$B" "$W/ma" "$SECS")")
  rb+=("$("$B" "$W/mb" "$SECS")")
  rc+=("$("$B" "$W/mc" "$SECS")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ma=$(median "${ra[@]}"); mb=$(median "${rb[@]}"); mc=$(median "${rc[@]}")
echo "opens/s, embedded KMS:                       median $ma (runs: ${ra[*]})"
echo "opens/s, kmsfs kms serve on loopback:        median $mb (runs: ${rb[*]})"
echo "opens/s, the same with --key-cache-seconds 5: median $mc (runs: ${rc[*]})"
awk -v a="$ma" -v b="$mb" -v c="$mc" 'BEGIN { printf "remote / embedded: %.3f; remote with cache / embedded: %.3f\n", b/a, c/a }'

# The tree, read once per fresh mount.
REG="${CARGO_HOME:-$HOME/.cargo}/registry/src"
if [ -d "$REG" ]; then
  (cd "$REG" && find . -type f | sort | sed -n 1,8000p > "$W/tree.list")
  tar -C "$REG" -cf "$W/tree.tar" -T "$W/tree.list"
  for m in ma mb; do mkdir -p "$W/$m/tree" && tar -C "$W/$m/tree" -xf "$W/tree.tar"; done
  "$K" unmount "$W/ma"; "$K" unmount "$W/mb"; "$K" unmount "$W/mc"
  rm -rf "$W/cc"; cp -a "$W/cb" "$W/cc"; cp -a "$W/cb" "$W/cd"; mkdir -p "$W/md"
  readall() { # MOUNTPOINT: seconds to read every file of its tree
    sync; echo 3 > /proc/sys/vm/drop_caches
    local t0 t1; t0=$(date +%s.%N)
    find "$1/tree" -type f -print0 | xargs -0 cat > /dev/null
    t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l
  }
  ta=(); tb=(); tc=(); td=()
  for r in $(seq "$ROUNDS"); do
    KMSFS_HOME="$W/local" "$K" mount "$W/ca" "$W/ma" 2>/dev/null; ta+=("$(readall "$W/ma")"); "$K" unmount "$W/ma"
    KMSFS_HOME="$W/state" "$K" mount "$W/cb" "$W/mb" --key-cache-seconds 0 2>/dev/null; tb+=("$(readall "$W/mb")"); "$K" unmount "$W/mb"
    KMSFS_HOME="$W/state" "$K" mount "$W/cc" "$W/mc" 2>/dev/null; tc+=("$(readall "$W/mc")"); "$K" unmount "$W/mc"
    KMSFS_HOME="$W/state" "$K" mount "$W/cd" "$W/md" --key-readahead 2>/dev/null; td+=("$(readall "$W/md")"); "$K" unmount "$W/md"
  done
  a=$(median "${ta[@]}"); b=$(median "${tb[@]}"); c=$(median "${tc[@]}"); d=$(median "${td[@]}")
  n=$(wc -l < "$W/tree.list")
  printf 'reading %s files once, fresh mount, cold cache (s, median of %s):\n' "$n" "$ROUNDS"
  printf '  embedded KMS %.2f; remote without cache %.2f (%.2fx); remote, cache %.2f (%.2fx); remote, cache and --key-readahead %.2f (%.2fx)\n' \
    "$a" "$b" "$(echo "$b / $a" | bc -l)" "$c" "$(echo "$c / $a" | bc -l)" "$d" "$(echo "$d / $a" | bc -l)"
  echo "  runs: embedded ${ta[*]}; no cache ${tb[*]}; cache ${tc[*]}; readahead ${td[*]}"
fi
