#!/bin/bash
# Co-location A/B (as root): how much of untar, reading every file and rm -rf
# is the wake-up of the other CPU. Each workload runs on a default kmsfs mount
# (/dev/fuse) and on securefs, once with the daemon and the caller free, once
# with both confined to CPU 0 (taskset), and kmsfs once with only its daemon
# confined. Cold caches, ROUNDS rounds in alternating order, medians (min-max).
# Usage: bash scripts/colocate.sh [ROUNDS]   (default 3; ~80 s a round)
set -u
cd "$(dirname "$0")/.." || exit 1
N=${1:-3}
W="${BENCH_DIR:-/var/tmp/kmsfs-bench}/colocate"
bash scripts/deps.sh fuse3 bc python3 securefs util-linux || exit 1
cargo build --release --quiet --bin kmsfs || exit 1
K="$PWD/target/release/kmsfs"
for m in "$W"/m "$W"/sm; do [ -d "$m" ] && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }; done
rm -rf "$W" && mkdir -p "$W"/c "$W"/m "$W"/sc "$W"/sm
export KMSFS_HOME="$W/kms" KMSFS_KEY_FILE="$W/root.key"
head -c 32 /dev/urandom > "$KMSFS_KEY_FILE"
REG="${CARGO_HOME:-$HOME/.cargo}/registry/src"
(cd "$REG" && find . -type f | sort | head -n 8000 > "$W/tree.list")
tar -C "$REG" -cf "$W/tree.tar" -T "$W/tree.list" || exit 1
"$K" init "$W/c" >/dev/null 2>&1 && "$K" mount --io-uring off "$W/c" "$W/m" 2>/dev/null || exit 1
securefs create --pass b "$W/sc" >/dev/null 2>&1 && securefs mount -b --pass b "$W/sc" "$W/sm" >/dev/null 2>&1 || exit 1
trap '"$K" unmount "$W/m"; fusermount3 -u "$W/sm" 2>/dev/null || umount -l "$W/sm"' EXIT
for _ in $(seq 50); do grep -q " $W/sm " /proc/mounts && break; sleep 0.1; done
P=$(pgrep -f "kmsfs mount --io-uring off $W/c" | head -1)
S=$(pgrep -f "securefs mount -b --pass b $W/sc" | head -1)
[ -n "$P" ] && [ -n "$S" ] || { echo "colocate.sh: a daemon's pid not found" >&2; exit 1; }
ALL=$(( (1 << $(nproc)) - 1 ))
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# run NAME MOUNT DAEMON_MASK DAEMON_PID CALLER_PREFIX...
run() {
  local n=$1 d=$2/t mask=$3 pid=$4; shift 4
  taskset -a -p "$mask" "$pid" >/dev/null
  rm -rf "$d"; mkdir "$d"; drop
  local t0 t1 t2 t3 t4
  t0=$(now); "$@" tar -C "$d" -xf "$W/tree.tar"; t1=$(now); drop
  t2=$(now); "$@" sh -c "find '$d' -type f -print0 | xargs -0 cat > /dev/null"; t3=$(now)
  "$@" rm -rf "$d"; t4=$(now)
  printf '%s untar %s\n%s read %s\n%s rm %s\n' "$n" "$(echo "$t1-$t0" | bc)" \
    "$n" "$(echo "$t3-$t2" | bc)" "$n" "$(echo "$t4-$t3" | bc)" >> "$W/res"
  taskset -a -p "$ALL" "$pid" >/dev/null
}
: > "$W/res"
for r in $(seq 1 "$N"); do
  order="free both donly sfree sboth"
  [ $((r % 2)) = 1 ] && order="sboth sfree donly both free"
  for c in $order; do
    case $c in
      free) run free "$W/m" "$ALL" "$P" env ;;
      both) run both "$W/m" 1 "$P" taskset 1 ;;
      donly) run donly "$W/m" 1 "$P" env ;;
      sfree) run sfree "$W/sm" "$ALL" "$S" env ;;
      sboth) run sboth "$W/sm" 1 "$S" taskset 1 ;;
    esac
  done
done
python3 - "$W/res" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    n, w, t = line.split()
    d[(w, n)].append(float(t))
names = {"free": "kmsfs free", "both": "kmsfs both on CPU 0", "donly": "kmsfs daemon on CPU 0",
         "sfree": "securefs free", "sboth": "securefs both on CPU 0"}
print("| workload (s) | " + " | ".join(names.values()) + " |")
print("|---" * (len(names) + 1) + "|")
for w in ["untar", "read", "rm"]:
    cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in (d[(w, n)] for n in names)]
    print(f"| {w} | " + " | ".join(cells) + " |")
PY
