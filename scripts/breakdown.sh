#!/usr/bin/env bash
# Where the time of each small-file workload goes, per file: FUSE requests,
# system calls, context switches and disk requests (all processes, counted
# by perf over the whole machine, which should be otherwise idle), with the
# wall time and the CPU time used, for a plain directory, bindfs (a FUSE
# passthrough), kmsfs over /dev/fuse and, where the kernel has it, kmsfs over
# FUSE-over-io_uring, and kmsfs over /dev/fuse with --no-prefetch (what the
# read-ahead across files changes). The same tree as scripts/bench.sh (the first 8,000 files
# of the cargo registry), each workload after a cold cache, the median of
# ROUNDS rounds. The FUSE requests are also counted by opcode.
#
#   bash scripts/breakdown.sh [ROUNDS]     (default 3; root: drop_caches, perf -a)
#
# BENCH_DIR (default /var/tmp/kmsfs-bench) must be on the disk to measure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
W="${BENCH_DIR:-/var/tmp/kmsfs-bench}/breakdown"
bash scripts/deps.sh linux-perf bindfs bc python3 || exit 1
cargo build --release --quiet --bin kmsfs || exit 1
K="$PWD/target/release/kmsfs"
for m in "$W"/m_*; do [ -d "$m" ] && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }; done
rm -rf "$W" && mkdir -p "$W/src"
export KMSFS_HOME="$W/kms" KMSFS_KEY_FILE="$W/root.key"
head -c 32 /dev/urandom > "$KMSFS_KEY_FILE"
REG="${CARGO_HOME:-$HOME/.cargo}/registry/src"
(cd "$REG" && find . -type f | sort | head -n 8000 > "$W/src/tree.list")
tar -C "$REG" -cf "$W/src/tree.tar" -T "$W/src/tree.list"
NFILES=$(wc -l < "$W/src/tree.list")

URING=/sys/module/fuse/parameters/enable_uring
URING_WAS=""
[ -w "$URING" ] && URING_WAS=$(cat "$URING")
SYSTEMS=(plain bindfs kmsfs_devfuse kmsfs_nopf)
mkdir -p "$W/plain" "$W/c_bindfs" "$W/m_bindfs" "$W/c_kmsfs_devfuse" "$W/m_kmsfs_devfuse" "$W/c_kmsfs_nopf" "$W/m_kmsfs_nopf"
bindfs "$W/c_bindfs" "$W/m_bindfs" || exit 1
"$K" init "$W/c_kmsfs_devfuse" >/dev/null 2>&1 || exit 1
"$K" mount --io-uring off "$W/c_kmsfs_devfuse" "$W/m_kmsfs_devfuse" 2>/dev/null || exit 1
"$K" init "$W/c_kmsfs_nopf" >/dev/null 2>&1 || exit 1
"$K" mount --io-uring off --no-prefetch "$W/c_kmsfs_nopf" "$W/m_kmsfs_nopf" 2>/dev/null || exit 1
if [ -n "$URING_WAS" ]; then
  echo Y > "$URING"
  mkdir -p "$W/c_kmsfs_uring" "$W/m_kmsfs_uring"
  "$K" init "$W/c_kmsfs_uring" >/dev/null 2>&1 &&
    "$K" mount --io-uring auto "$W/c_kmsfs_uring" "$W/m_kmsfs_uring" 2>/dev/null && SYSTEMS+=(kmsfs_uring)
fi
cleanup() {
  "$K" unmount "$W/m_kmsfs_devfuse" 2>/dev/null
  "$K" unmount "$W/m_kmsfs_nopf" 2>/dev/null
  [ -d "$W/m_kmsfs_uring" ] && "$K" unmount "$W/m_kmsfs_uring" 2>/dev/null
  fusermount3 -u "$W/m_bindfs" 2>/dev/null || umount -l "$W/m_bindfs" 2>/dev/null
  [ -n "$URING_WAS" ] && echo "$URING_WAS" > "$URING"
  return 0
}
trap cleanup EXIT
dir_of() { if [ "$1" = plain ]; then echo "$W/plain"; else echo "$W/m_$1"; fi; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
EVENTS=fuse:fuse_request_send,raw_syscalls:sys_enter,context-switches,block:block_rq_issue
RES="$W/raw.tsv"
: > "$RES"
# measure SYSTEM WORKLOAD ROUND COMMAND...: perf stat over the machine.
measure() {
  local s=$1 w=$2 r=$3; shift 3
  local out="$W/perf.$s.$w.$r"
  # Busy CPU time from /proc/stat (user, nice, system, irq, softirq, steal).
  perf stat -a -x, -e "$EVENTS" -o "$out" -- bash -c '
    busy() { read -r _ u n s _ _ x y z _ < /proc/stat; echo $((u + n + s + x + y + z)); }
    b0=$(busy); t0=$(date +%s%N); "$@" > /dev/null; t1=$(date +%s%N); b1=$(busy)
    echo $(( (t1 - t0) / 1000 )) $(( (b1 - b0) * 1000000 / $(getconf CLK_TCK) )) > "'"$out"'.us"' _ "$@"
  read -r wall busy < "$out.us"
  printf '%s\t%s\t%s\twall_us\t%s\n%s\t%s\t%s\tcpu_us\t%s\n' "$s" "$w" "$r" "$wall" "$s" "$w" "$r" "$busy" >> "$RES"
  # perf -x, lines: value,unit,event,...
  awk -F, -v s="$s" -v w="$w" -v r="$r" 'NF > 3 && $1 ~ /^[0-9.]+$/ { printf "%s\t%s\t%s\t%s\t%s\n", s, w, r, $3, $1 }' "$out" >> "$RES"
}
# The opcodes of one kmsfs run of WORKLOAD, recorded in round 1.
opcodes() {
  local s=$1 w=$2; shift 2
  perf record -q -e fuse:fuse_request_send -a -o "$W/rec.$s.$w" -- "$@" > /dev/null 2>&1
  perf script -i "$W/rec.$s.$w" 2>/dev/null | grep -o "opcode [0-9]* ([A-Z_]*)" |
    sed 's/opcode [0-9]* (FUSE_\(.*\))/\1/' | sort | uniq -c | sort -rn |
    awk -v s="$s" -v w="$w" '{ printf "%s\t%s\t%s\t%s\n", s, w, $2, $1 }' >> "$W/opcodes.tsv"
}
: > "$W/opcodes.tsv"
for r in $(seq 1 "$ROUNDS"); do
  for s in "${SYSTEMS[@]}"; do
    d=$(dir_of "$s")
    rm -rf "$d/tree"; mkdir "$d/tree"; drop
    measure "$s" untar "$r" tar -C "$d/tree" -xf "$W/src/tree.tar"
    drop; measure "$s" ls_lR "$r" ls -lR "$d/tree"
    drop; measure "$s" read_all "$r" sh -c "cd '$d/tree' && find . -type f -print0 | xargs -0 cat"
    drop; measure "$s" rm_rf "$r" rm -rf "$d/tree"
    if [ "$r" = 1 ] && [ "$s" != plain ]; then
      mkdir "$d/tree"; drop; opcodes "$s" untar tar -C "$d/tree" -xf "$W/src/tree.tar"
      drop; opcodes "$s" ls_lR ls -lR "$d/tree"
      drop; opcodes "$s" read_all sh -c "cd '$d/tree' && find . -type f -print0 | xargs -0 cat"
      drop; opcodes "$s" rm_rf rm -rf "$d/tree"
    fi
  done
done
python3 - "$RES" "$W/opcodes.tsv" "$NFILES" <<'EOF'
import sys, statistics, collections
raw, ops, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
vals = collections.defaultdict(list)
for line in open(raw):
    s, w, r, k, v = line.rstrip("\n").split("\t")
    vals[(s, w, k)].append(float(v))
systems = [s for s in ["plain", "bindfs", "kmsfs_devfuse", "kmsfs_nopf", "kmsfs_uring"] if any(k[0] == s for k in vals)]
cols = [("wall_us", "wall µs", 1), ("cpu_us", "CPU µs", 1), ("fuse:fuse_request_send", "FUSE req", 1),
        ("raw_syscalls:sys_enter", "syscalls", 1), ("context-switches", "ctx sw", 1),
        ("block:block_rq_issue", "disk req", 1)]
print(f"\nper file ({n} files; medians of {len(vals[(systems[0], 'untar', 'wall_us')])} rounds, all processes)\n")
print("| workload | system | " + " | ".join(c[1] for c in cols) + " |")
print("|---|---|" + "---|" * len(cols))
for w in ["untar", "ls_lR", "read_all", "rm_rf"]:
    for s in systems:
        row = []
        for key, _, scale in cols:
            v = vals.get((s, w, key))
            row.append(f"{statistics.median(v) * scale / n:.1f}" if v else "-")
        print(f"| {w} | {s} | " + " | ".join(row) + " |")
print("\nFUSE requests per file by opcode (one run each)\n")
byw = collections.defaultdict(list)
for line in open(ops):
    s, w, op, c = line.rstrip("\n").split("\t")
    byw[(w, s)].append((op, int(c)))
for (w, s), l in sorted(byw.items()):
    print(f"- {w}, {s}: " + ", ".join(f"{op} {c / n:.2f}" for op, c in l if c / n >= 0.01))
EOF
