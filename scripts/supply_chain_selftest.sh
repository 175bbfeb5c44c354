#!/usr/bin/env bash
# Shows that the supply-chain check is not a no-op: cargo-deny, run as scripts/supply_chain.sh
# runs it and with this repo's deny.toml, must reject a throwaway "canary" crate that
#   1. depends on a crate version an advisory names (an advisory made up here, in a database of
#      its own, against the `itoa` version of our Cargo.lock: it comes from crates.io),
#   2. is under a licence deny.toml does not allow (GPL-3.0-only),
#   3. depends on a crate from a git repository instead of crates.io (a local one, file://),
#   4. depends on a crate deny.toml bans (that git crate is named `protobuf`).
# Each case must exit non-zero and name what it found; any that passes fails this script.
# Needs cargo-deny on PATH (scripts/supply_chain.sh sets it up) and cargo's crate cache.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# A fixed place (its git dependency's path is then the same each run, so cargo's git cache
# under $CARGO_HOME/git does not grow); inside .cache, which is not part of the workspace.
canary="$root/.cache/supply-chain-canary"
rm -rf "$canary"
mkdir -p "$canary/app/src" "$canary/protobuf/src"

itoa=$(awk '/^name = "itoa"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$itoa" ] || { echo "supply-chain self-test: no itoa in Cargo.lock to use as the canary's registry crate" >&2; exit 1; }

# The git dependency: a local repository holding a crate named like a banned one.
cat > "$canary/protobuf/Cargo.toml" <<'EOF'
[package]
name = "protobuf"
version = "3.99.0"
edition = "2021"
license = "MIT"
EOF
: > "$canary/protobuf/src/lib.rs"
git -C "$canary/protobuf" init -q
git -C "$canary/protobuf" add -A
# A fixed date: the same commit id every run, so cargo keeps one checkout of it.
GIT_AUTHOR_DATE=2000-01-01T00:00:00Z GIT_COMMITTER_DATE=2000-01-01T00:00:00Z \
  git -C "$canary/protobuf" -c user.name=canary -c user.email=canary@invalid -c commit.gpgsign=false \
  commit -q -m canary

cat > "$canary/app/Cargo.toml" <<EOF
[package]
name = "supply-chain-canary"
version = "0.0.0"
edition = "2021"
license = "GPL-3.0-only"
publish = false

[dependencies]
itoa = "=$itoa"
protobuf = { git = "file://$canary/protobuf" }

# Not a member of graph-cdc's workspace.
[workspace]
EOF
: > "$canary/app/src/lib.rs"
# The registry crate comes from cargo's cache (the build already fetched it); crates.io if not.
(cd "$canary/app" && { cargo generate-lockfile --offline -q 2>/dev/null || cargo generate-lockfile -q; } && cargo fetch -q)

# The made-up advisory, in a database of its own where cargo-deny looks for deny.toml's db-urls
# entry (the folder name is the one scripts/supply_chain.sh fills).
db="$canary/advisory-dbs/$(basename "$ADVISORY_DB_DIR")"
mkdir -p "$db/crates/itoa" "$db/.git"
touch "$db/.git/FETCH_HEAD"
cat > "$db/crates/itoa/RUSTSEC-2999-0001.md" <<EOF
\`\`\`toml
[advisory]
id = "RUSTSEC-2999-0001"
package = "itoa"
date = "2999-01-01"
url = "https://example.invalid/graph-cdc/supply-chain-canary"
categories = ["memory-corruption"]

[versions]
patched = [">= 999.0.0"]
\`\`\`

# Made-up advisory: graph-cdc's supply-chain self-test

It names every itoa release, so that a canary crate depending on itoa must fail the check.
EOF

# deny.toml as it is, but with the made-up database.
sed -e "s|^db-path = .*|db-path = \"$canary/advisory-dbs\"|" deny.toml > "$canary/deny.toml"
grep -q "^db-path = \"$canary/advisory-dbs\"" "$canary/deny.toml" \
  || { echo "supply-chain self-test: deny.toml has no db-path line to point at the canary database" >&2; exit 1; }

failed=0
expect_rejection() {
  local check="$1" pattern="$2" what="$3" out rc=0
  out=$(cargo deny --offline --color never --manifest-path "$canary/app/Cargo.toml" \
    --config "$canary/deny.toml" check "$check" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] && grep -qE "$pattern" <<<"$out"; then
    echo "supply-chain self-test: $check rejects $what (exit $rc)"
  else
    echo "!! supply-chain self-test: cargo deny check $check did NOT reject $what (exit $rc):" >&2
    echo "$out" | tail -20 >&2
    failed=1
  fi
}
expect_rejection advisories 'RUSTSEC-2999-0001' "a crate with an advisory (itoa $itoa)"
expect_rejection licenses 'GPL-3\.0-only' "a GPL-3.0-only crate"
expect_rejection sources 'source-not-allowed' "a git dependency"
expect_rejection bans 'protobuf' "a banned crate (protobuf)"
rm -rf "$canary"
exit "$failed"
