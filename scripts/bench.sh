#!/usr/bin/env bash
# The filesystem benchmark: the same workloads, interleaved round-robin over
# several rounds, on a plain directory, kmsfs (encrypted names, the default),
# kmsfs_plain (init --plaintext-names), gocryptfs, securefs, CryFS and bindfs
# (a FUSE passthrough without encryption). Prints medians (min-max) and
# ratios. Every run checks what it reads back (sha256).
#
#   bash scripts/bench.sh [ROUNDS]        (default 3; needs root for drop_caches)
#
# BENCH_DIR (default /var/tmp/kmsfs-bench) must be on the disk to measure.
# Other sizes, so a lead is not an artefact of one set-up: BENCH_SIZE_MB (the
# large file, default 512), BENCH_TREE (where the small files come from,
# default the cargo registry) and BENCH_FILES (how many, default 8000).
# FUSE over io_uring is switched on for the run where the kernel has it
# (/sys/module/fuse/parameters/enable_uring, restored at the end): kmsfs and
# kmsfs_plain use it (KMSFS_IO_URING=auto), kmsfs_devfuse is kmsfs with
# --io-uring off, to show what the transport is worth. BENCH_URING=N leaves
# the parameter alone. The peers use /dev/fuse: none of them speaks io_uring.
# KMSFS_BASELINE=/path/to/an/older/kmsfs adds it as the system "kmsfs_base",
# so a change's cost is measured against the code before it in the same run.
# A peer that is not installed and cannot be installed is skipped with a message.
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
W="${BENCH_DIR:-/var/tmp/kmsfs-bench}"
SIZE_MB="${BENCH_SIZE_MB:-512}"
NWANT="${BENCH_FILES:-8000}"
bash scripts/deps.sh fio bc python3 || exit 1
for p in gocryptfs securefs cryfs bindfs; do
  command -v "$p" >/dev/null || bash scripts/deps.sh "$p" || echo "skipping $p: cannot install it" >&2
done
cargo build --release --quiet --bin kmsfs --example kms_bench --example kms_serve_bench || exit 1
K="$PWD/target/release/kmsfs"

rm -rf "$W" && mkdir -p "$W/src" "$W/results"
RES="$W/results/raw.tsv"
: > "$RES"
export KMSFS_HOME="$W/kms" KMSFS_KEY_FILE="$W/root.key"
head -c 32 /dev/urandom > "$KMSFS_KEY_FILE"

echo "preparing data: $SIZE_MB MiB random file, a tree of up to $NWANT files" >&2
head -c "$((SIZE_MB << 20))" /dev/urandom > "$W/src/big.bin"
BIG_SUM=$(sha256sum < "$W/src/big.bin" | cut -d' ' -f1)
REG="${BENCH_TREE:-${CARGO_HOME:-$HOME/.cargo}/registry/src}"
(cd "$REG" && find . -type f | sort | sed -n "1,${NWANT}p" > "$W/src/tree.list")
tar -C "$REG" -cf "$W/src/tree.tar" -T "$W/src/tree.list"
NFILES=$(wc -l < "$W/src/tree.list")
tree_sum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 cat) | sha256sum | cut -d' ' -f1; }
mkdir -p "$W/src/tree" && tar -C "$W/src/tree" -xf "$W/src/tree.tar"
TREE_SUM=$(tree_sum "$W/src/tree")
TREE_MB=$(du -sm "$W/src/tree" | cut -f1)
rm -rf "$W/src/tree"
echo "tree: $NFILES files, $TREE_MB MiB" >&2

URING=/sys/module/fuse/parameters/enable_uring
URING_WAS=""
export KMSFS_IO_URING=auto
if [ "${BENCH_URING:-Y}" = Y ] && [ -w "$URING" ]; then
  URING_WAS=$(cat "$URING")
  echo Y > "$URING"
fi
SYSTEMS=()
mount_all() {
  mkdir -p "$W/plain" && SYSTEMS+=(plain)
  mkdir -p "$W/c_kmsfs" "$W/m_kmsfs"
  if "$K" init "$W/c_kmsfs" >/dev/null 2>&1 && "$K" mount "$W/c_kmsfs" "$W/m_kmsfs" 2>/dev/null; then SYSTEMS+=(kmsfs); fi
  mkdir -p "$W/c_kmsfs_plain" "$W/m_kmsfs_plain"
  if "$K" init --plaintext-names "$W/c_kmsfs_plain" >/dev/null 2>&1 &&
    "$K" mount "$W/c_kmsfs_plain" "$W/m_kmsfs_plain" 2>/dev/null; then SYSTEMS+=(kmsfs_plain); fi
  if [ -n "$URING_WAS" ]; then
    mkdir -p "$W/c_kmsfs_devfuse" "$W/m_kmsfs_devfuse"
    if "$K" init "$W/c_kmsfs_devfuse" >/dev/null 2>&1 &&
      "$K" mount --io-uring off "$W/c_kmsfs_devfuse" "$W/m_kmsfs_devfuse" 2>/dev/null; then SYSTEMS+=(kmsfs_devfuse); fi
  fi
  if [ -n "${KMSFS_BASELINE:-}" ]; then
    mkdir -p "$W/c_kmsfs_base" "$W/m_kmsfs_base"
    if KMSFS_HOME="$W/kms_base" "$KMSFS_BASELINE" init "$W/c_kmsfs_base" >/dev/null 2>&1 &&
      KMSFS_HOME="$W/kms_base" "$KMSFS_BASELINE" mount "$W/c_kmsfs_base" "$W/m_kmsfs_base" 2>/dev/null; then
      SYSTEMS+=(kmsfs_base)
    fi
  fi
  if command -v gocryptfs >/dev/null; then
    mkdir -p "$W/c_gocryptfs" "$W/m_gocryptfs"
    gocryptfs -init -q -extpass "echo bench" "$W/c_gocryptfs" >/dev/null 2>&1 &&
      gocryptfs -q -extpass "echo bench" "$W/c_gocryptfs" "$W/m_gocryptfs" 2>/dev/null && SYSTEMS+=(gocryptfs)
  fi
  if command -v securefs >/dev/null; then
    mkdir -p "$W/c_securefs" "$W/m_securefs"
    securefs create --pass bench "$W/c_securefs" >/dev/null 2>&1 &&
      securefs mount -b --pass bench "$W/c_securefs" "$W/m_securefs" >/dev/null 2>&1 && sleep 1 && SYSTEMS+=(securefs)
  fi
  if command -v cryfs >/dev/null; then
    mkdir -p "$W/c_cryfs" "$W/m_cryfs"
    echo bench | CRYFS_FRONTEND=noninteractive CRYFS_NO_UPDATE_CHECK=true cryfs --allow-replaced-filesystem "$W/c_cryfs" "$W/m_cryfs" >/dev/null 2>&1 &&
      SYSTEMS+=(cryfs)
  fi
  if command -v bindfs >/dev/null; then
    mkdir -p "$W/c_bindfs" "$W/m_bindfs"
    bindfs "$W/c_bindfs" "$W/m_bindfs" && SYSTEMS+=(bindfs)
  fi
}
umount_all() {
  "$K" unmount "$W/m_kmsfs" 2>/dev/null
  "$K" unmount "$W/m_kmsfs_plain" 2>/dev/null
  [ -d "$W/m_kmsfs_devfuse" ] && "$K" unmount "$W/m_kmsfs_devfuse" 2>/dev/null
  [ -d "$W/m_kmsfs_base" ] && "$K" unmount "$W/m_kmsfs_base" 2>/dev/null
  for s in gocryptfs securefs cryfs bindfs; do
    [ -d "$W/m_$s" ] && { fusermount -u "$W/m_$s" 2>/dev/null || umount -l "$W/m_$s" 2>/dev/null; }
  done
  if [ -n "$URING_WAS" ]; then echo "$URING_WAS" > "$URING"; fi
  return 0
}
trap umount_all EXIT
dir_of() { if [ "$1" = plain ]; then echo "$W/plain"; else echo "$W/m_$1"; fi; }
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$RES"; }
fail() { echo "CHECK FAILED: $*" >&2; record "$1" check "$2" FAIL; }

run_system() {
  local s=$1 r=$2 d; d=$(dir_of "$s")
  # sequential write: 1 MiB writes, fsync at the end
  rm -f "$d/big"; drop
  local t0 t1; t0=$(now)
  dd if="$W/src/big.bin" of="$d/big" bs=1M conv=fsync status=none
  t1=$(now); record "$s" seqwrite_MBps "$r" "$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l)"
  # sequential read after dropping caches
  drop; t0=$(now)
  dd if="$d/big" of=/dev/null bs=1M status=none
  t1=$(now); record "$s" seqread_MBps "$r" "$(echo "$SIZE_MB / ($t1 - $t0)" | bc -l)"
  [ "$(sha256sum < "$d/big" | cut -d' ' -f1)" = "$BIG_SUM" ] || fail "$s" "big file content"
  rm -f "$d/big"
  # random 4 KiB reads and writes, 50/50, psync, 64 MiB file, 10 s
  rm -f "$d/fio.dat"
  local iops
  iops=$(fio --name=rand --filename="$d/fio.dat" --size=64M --rw=randrw --rwmixread=50 --bs=4k --ioengine=psync \
    --runtime=10 --time_based --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(j["read"]["iops"]+j["write"]["iops"])' 2>/dev/null)
  record "$s" randrw_IOPS "$r" "${iops:-0}"
  rm -f "$d/fio.dat"
  # small files: extract, ls -lR, read everything, rm -rf
  rm -rf "$d/tree"; mkdir "$d/tree"; drop
  t0=$(now); tar -C "$d/tree" -xf "$W/src/tree.tar"; t1=$(now)
  record "$s" untar_s "$r" "$(echo "$t1 - $t0" | bc -l)"
  drop; t0=$(now); ls -lR "$d/tree" > /dev/null; t1=$(now)
  record "$s" lsR_s "$r" "$(echo "$t1 - $t0" | bc -l)"
  drop; t0=$(now); local sum; sum=$(tree_sum "$d/tree"); t1=$(now)
  record "$s" readall_s "$r" "$(echo "$t1 - $t0" | bc -l)"
  [ "$sum" = "$TREE_SUM" ] || fail "$s" "tree content"
  t0=$(now); rm -rf "$d/tree"; t1=$(now)
  record "$s" rmrf_s "$r" "$(echo "$t1 - $t0" | bc -l)"
}

mount_all
for s in kmsfs gocryptfs securefs cryfs bindfs; do
  [[ " ${SYSTEMS[*]} " == *" $s "* ]] || echo "skipping $s: not installed or did not mount" >&2
done
echo "systems: ${SYSTEMS[*]}; $ROUNDS rounds" >&2
n=${#SYSTEMS[@]}
for r in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do
    s=${SYSTEMS[$(((i + r - 1) % n))]}
    echo "round $r: $s" >&2
    run_system "$s" "$r"
  done
done
KPID=$(pgrep -f "kmsfs mount $W/c_kmsfs $W/m_kmsfs" | head -n1)
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$KPID/status" 2>/dev/null)
record kmsfs peakRSS_MiB 0 "$(echo "${RSS:-0} / 1024" | bc -l)"
umount_all
./target/release/examples/kms_bench 3 > "$W/results/kms.txt" 2>&1
./target/release/examples/kms_serve_bench 3 >> "$W/results/kms.txt" 2>&1

python3 - "$RES" "$W/results/kms.txt" "$NFILES" "$TREE_MB" "$SIZE_MB" <<'PY'
import sys, statistics, collections
raw, kms, nfiles, tree_mb, size_mb = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
vals = collections.defaultdict(list)
failed = []
for line in open(raw):
    s, w, r, v = line.rstrip("\n").split("\t")
    if w == "check":
        failed.append((s, r)); continue
    vals[(s, w)].append(float(v))
systems = [s for s in ["plain", "kmsfs", "kmsfs_plain", "kmsfs_devfuse", "kmsfs_base", "gocryptfs", "securefs", "cryfs", "bindfs"] if any(k[0] == s for k in vals)]
works = [("seqwrite_MBps", f"seq write {size_mb} MiB (MB/s)", True), ("seqread_MBps", f"seq read {size_mb} MiB (MB/s)", True),
         ("randrw_IOPS", "random 4K r/w (IOPS)", True), ("untar_s", f"untar {nfiles} files (s)", False),
         ("lsR_s", "ls -lR (s)", False), ("readall_s", f"read all {tree_mb} MiB (s)", False), ("rmrf_s", "rm -rf (s)", False)]
def med(s, w):
    v = vals.get((s, w)); return statistics.median(v) if v else None
def fmt(x): return "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.2f}")
print("| workload | " + " | ".join(systems) + " |")
print("|---|" + "---|" * len(systems))
for w, label, higher in works:
    cells = []
    for s in systems:
        v = vals.get((s, w))
        cells.append("-" if not v else f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})")
    print(f"| {label} | " + " | ".join(cells) + " |")
print()
peers = [s for s in systems if s not in ("plain", "kmsfs", "kmsfs_plain", "kmsfs_devfuse", "kmsfs_base", "bindfs")]
def ratios(me):
    print(f"| workload ({me}) | {me} vs plain | " + " | ".join(f"{me} vs {p}" for p in peers) + " | fastest peer | ahead? |")
    print("|---|---|" + "---|" * len(peers) + "---|---|")
    for w, label, higher in works:
        k = med(me, w)
        if k is None: continue
        def ratio(o):
            return None if (o is None or o == 0 or k == 0) else (k / o if higher else o / k)
        pv = {p: med(p, w) for p in peers if med(p, w) is not None}
        best = (max if higher else min)(pv, key=pv.get) if pv else None
        ahead = "-" if best is None else ("yes" if (k > pv[best] if higher else k < pv[best]) else "no")
        cells = [fmt(ratio(med(p, w))) + "×" if ratio(med(p, w)) else "-" for p in peers]
        print(f"| {label} | {fmt(ratio(med('plain', w)))}× | " + " | ".join(cells) + f" | {best or '-'} | {ahead} |")
    print()
for me in ("kmsfs", "kmsfs_plain", "kmsfs_devfuse"):
    if me in systems: ratios(me)
def versus(other, title):
    if other not in systems: return
    print(f"| workload | {title} |\n|---|---|")
    for w, label, higher in works:
        k, b = med("kmsfs", w), med(other, w)
        if k and b:
            print(f"| {label} | {fmt(k / b if higher else b / k)}× |")
    print()
versus("kmsfs_plain", "kmsfs (encrypted names) vs kmsfs_plain")
versus("kmsfs_devfuse", "kmsfs (io_uring) vs kmsfs_devfuse (/dev/fuse)")
versus("kmsfs_base", "kmsfs vs kmsfs_base (the baseline build)")
print("(ratios > 1 mean kmsfs is faster; for timed workloads the ratio is other time / kmsfs time)")
rss = med("kmsfs", "peakRSS_MiB")
if rss is not None: print(f"\nkmsfs daemon peak RSS: {rss:.1f} MiB")
print("\n" + open(kms).read())
if failed: print("DATA CHECK FAILURES:", failed)
PY
