#!/usr/bin/env bash
# The dependency audit of the test command (scripts/test.sh): cargo-deny with deny.toml checks
# RustSec advisories, licences, bans and sources over the whole workspace, then
# scripts/supply_chain_selftest.sh shows that each of those checks can fail.
#
# cargo-deny is built from crates.io once (`cargo install --locked`, 5 to 6 minutes on 2 cores)
# and kept in ~/.cache/graph-cdc/tools. The advisory database is cloned from upstream when GitHub
# answers within 30 s; otherwise the snapshot scripts/update_advisory_db.sh makes is unpacked,
# taken from the first of: $GRAPH_CDC_ADVISORY_DB (the .tar.gz), ../shared/rustsec/,
# supply-chain/, .cache/supply-chain/. With neither, the advisories check is skipped loudly and
# the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."

deny_version=0.20.2
# Outside the clone, so that CI's fresh clone of the repo on the same machine finds it too
# (like cargo-fuzz in ~/.cargo/bin); GRAPH_CDC_TOOLS_DIR chooses another place.
tools="${GRAPH_CDC_TOOLS_DIR:-${HOME:+$HOME/.cache/graph-cdc/tools}}"
tools="${tools:-$PWD/.cache/tools}"
export PATH="$tools/bin:$PATH"

if [ "$(cargo-deny --version 2>/dev/null)" = "cargo-deny $deny_version" ]; then
  echo "cargo-deny $deny_version: cached ($(command -v cargo-deny))"
else
  echo "cargo-deny $deny_version: not in $tools, installing from crates.io (cold install: about 6 minutes on 2 cores)"
  start=$SECONDS
  cargo install cargo-deny --version "$deny_version" --locked --force --root "$tools" --quiet
  echo "cargo-deny $deny_version: cold install took $((SECONDS - start)) s (cached in $tools from now on)"
fi

# Where cargo-deny looks for deny.toml's db-urls entry: `<db-path>/<name>-<hash of the url>`.
db_root=.cache/advisory-dbs
export ADVISORY_DB_DIR="$db_root/advisory-db-3157b0e258782691"
upstream=https://github.com/rustsec/advisory-db
checks=(advisories bans licenses sources)
mkdir -p "$db_root"
rm -rf "$db_root/incoming"
if GIT_TERMINAL_PROMPT=0 timeout 30 git clone -q --depth 1 "$upstream" "$db_root/incoming" \
     2>"$db_root/clone.log"; then
  rm -rf "$ADVISORY_DB_DIR" && mv "$db_root/incoming" "$ADVISORY_DB_DIR"
  db_date=$(git -C "$ADVISORY_DB_DIR" show -s --format=%cI HEAD)
  echo "advisory DB: upstream $upstream at $(git -C "$ADVISORY_DB_DIR" rev-parse HEAD) ($db_date), fetched just now"
else
  rm -rf "$db_root/incoming"
  echo "advisory DB: upstream not reachable ($(head -1 "$db_root/clone.log" 2>/dev/null)); using the snapshot"
  snapshot=
  for candidate in ${GRAPH_CDC_ADVISORY_DB:+"$GRAPH_CDC_ADVISORY_DB"} ../shared/rustsec/advisory-db.tar.gz \
      supply-chain/advisory-db.tar.gz .cache/supply-chain/advisory-db.tar.gz; do
    if [ -s "$candidate" ]; then snapshot=$candidate; break; fi
  done
  if [ -z "$snapshot" ]; then
    echo "!! advisories SKIPPED: GitHub is out of reach and no advisory DB snapshot was found" >&2
    echo "!! (make one with scripts/update_advisory_db.sh where GitHub is reachable; see its header)" >&2
    checks=(bans licenses sources)
  else
    info="${snapshot%.tar.gz}.txt"
    field() { if [ -f "$info" ]; then sed -n "s/^$1=//p" "$info" | head -1; fi; }
    db_commit=$(field commit) db_date=$(field date) db_sha=$(field sha256)
    if [ -n "$db_sha" ] && [ "$(sha256sum "$snapshot" | cut -d' ' -f1)" != "$db_sha" ]; then
      echo "advisory DB snapshot $snapshot does not match the sha256 in $info" >&2
      exit 1
    fi
    rm -rf "$ADVISORY_DB_DIR" && mkdir -p "$ADVISORY_DB_DIR/.git"
    tar -xzf "$snapshot" -C "$ADVISORY_DB_DIR"
    # cargo-deny takes FETCH_HEAD's time as the database's age: the snapshot's upstream date.
    touch -d "${db_date:-1970-01-01T00:00:00Z}" "$ADVISORY_DB_DIR/.git/FETCH_HEAD"
    age_days=$(( ($(date +%s) - $(date -d "${db_date:-1970-01-01T00:00:00Z}" +%s)) / 86400 ))
    echo "advisory DB: snapshot $snapshot, upstream commit ${db_commit:-unknown} of ${db_date:-unknown date} ($age_days days old, $(find "$ADVISORY_DB_DIR/crates" -name 'RUSTSEC-*.md' | wc -l) advisories)"
    if [ "$age_days" -gt 90 ]; then
      echo "!! the advisory DB snapshot is $age_days days old: refresh it with scripts/update_advisory_db.sh where GitHub is reachable" >&2
    fi
  fi
fi

# --offline: cargo-deny neither fetches the database (done above) nor crates, so every package
# of Cargo.lock, for every platform, must be in cargo's cache first.
cargo fetch -q
start=$SECONDS
cargo deny --offline --color never --workspace check --show-stats "${checks[@]}"
echo "cargo deny check ${checks[*]}: passed in $((SECONDS - start)) s"

bash scripts/supply_chain_selftest.sh
