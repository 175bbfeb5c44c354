#!/usr/bin/env bash
# Refreshes the RustSec advisory database snapshot that scripts/supply_chain.sh checks against
# when the upstream database cannot be fetched (CI reaches package registries, not GitHub).
#
#   scripts/update_advisory_db.sh [OUT_DIR] [SOURCE]
#
# SOURCE: the upstream git URL (default https://github.com/rustsec/advisory-db), or a local clone
# or bare mirror of it. OUT_DIR (default .cache/supply-chain) receives:
#   advisory-db.tar.gz  the `crates/` advisories and the database's licence (CC0-1.0), nothing
#                       else cargo-deny does not read; byte-for-byte the same for the same commit
#   advisory-db.txt     its upstream commit and date, the advisory count and the archive's sha256
# scripts/supply_chain.sh looks for the pair in $GRAPH_CDC_ADVISORY_DB's folder, ../shared/rustsec,
# supply-chain/ and .cache/supply-chain, in that order.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-.cache/supply-chain}"
src="${2:-https://github.com/rustsec/advisory-db}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -d "$src" ]; then
  gitdir="$src"
else
  echo "cloning $src (depth 1)"
  GIT_TERMINAL_PROMPT=0 timeout 300 git clone -q --bare --depth 1 "$src" "$work/repo.git"
  gitdir="$work/repo.git"
fi
commit=$(git --git-dir="$gitdir" rev-parse HEAD)
date=$(git --git-dir="$gitdir" show -s --format=%cI HEAD)

mkdir "$work/tree"
git --git-dir="$gitdir" archive --format=tar HEAD crates LICENSE.txt | tar -x -C "$work/tree"
count=$(find "$work/tree/crates" -name 'RUSTSEC-*.md' | wc -l)
[ "$count" -gt 0 ] || { echo "no advisories under crates/ at $commit" >&2; exit 1; }

mkdir -p "$out"
# Sorted names, fixed owner and times, gzip without a name or time stamp: reproducible.
tar -C "$work/tree" --sort=name --owner=0 --group=0 --numeric-owner --mtime="$date" \
  -cf - crates LICENSE.txt | gzip -9 -n > "$work/advisory-db.tar.gz"
mv "$work/advisory-db.tar.gz" "$out/advisory-db.tar.gz"
sha=$(sha256sum "$out/advisory-db.tar.gz" | cut -d' ' -f1)
cat > "$out/advisory-db.txt" <<EOF
# RustSec advisory database snapshot (scripts/update_advisory_db.sh); CC0-1.0 like its source.
upstream=https://github.com/rustsec/advisory-db
commit=$commit
date=$date
advisories=$count
sha256=$sha
EOF
echo "advisory DB snapshot: $out/advisory-db.tar.gz ($(du -h "$out/advisory-db.tar.gz" | cut -f1), $count advisories, commit $commit of $date)"
