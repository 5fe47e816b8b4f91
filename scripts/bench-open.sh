#!/usr/bin/env bash
# What a key policy costs each open: opens/s through two kmsfs mounts whose
# keys have the default policy and a 20-statement policy (every statement
# with a condition, the matching one last), measured alternately.
# Usage: bash scripts/bench-open.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --quiet --bin kmsfs --example open_bench
K="$PWD/target/release/kmsfs"
B="$PWD/target/release/examples/open_bench"
ROUNDS="${1:-5}"; SECS="${2:-3}"
W=$(mktemp -d /tmp/kmsfs-bench-open.XXXXXX)
export KMSFS_HOME="$W/kms" KMSFS_KEY_FILE="$W/root.key"
head -c 32 /dev/urandom > "$KMSFS_KEY_FILE"
cleanup() { for m in "$W"/m*; do "$K" unmount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
stmts=""
for i in $(seq 0 18); do
  stmts+="{\"Sid\":\"S$i\",\"Effect\":\"Allow\",\"Principal\":\"*\",\"Action\":[\"kms:Decrypt\",\"kms:GenerateDataKey\"],\"Resource\":\"*\",\"Condition\":{\"StringLike\":{\"kms:EncryptionContext:kmsfs:path\":\"team$i/*\"}}},"
done
stmts+='{"Sid":"Root","Effect":"Allow","Principal":{"Unix":["uid:0"]},"Action":"kms:*","Resource":"*"}'
echo "{\"Version\":\"2012-10-17\",\"Statement\":[$stmts]}" > "$W/policy.json"
a=$("$K" kms create-key --query KeyMetadata.KeyId --output text 2>/dev/null)
b=$("$K" kms create-key --policy "file://$W/policy.json" --bypass-policy-lockout-safety-check --query KeyMetadata.KeyId --output text)
for x in a b; do
  key=$([ $x = a ] && echo "$a" || echo "$b")
  "$K" init "$W/c$x" --key-id "$key" >/dev/null
  mkdir -p "$W/m$x"
  "$K" mount "$W/c$x" "$W/m$x" 2>/dev/null
  mkdir "$W/m$x/projects"
  for i in $(seq 1 200); do echo "file $i" > "$W/m$x/projects/f$i"; done
done
ra=(); rb=()
for r in $(seq "$ROUNDS"); do
  ra+=("$("$B" "$W/ma/projects" "$SECS")")
  rb+=("$("$B" "$W/mb/projects" "$SECS")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ma=$(median "${ra[@]}"); mb=$(median "${rb[@]}")
echo "opens/s, default policy:      median $ma (runs: ${ra[*]})"
echo "opens/s, 20-statement policy: median $mb (runs: ${rb[*]})"
awk -v a="$ma" -v b="$mb" 'BEGIN { printf "20-statement policy / default: %.3f (%+.1f%%)\n", b/a, (b/a-1)*100 }'
