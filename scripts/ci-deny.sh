#!/usr/bin/env bash
# CI: cargo deny against deny.toml. Licences (only the permissive ones
# listed there), bans (wildcard versions fail; a crate in two versions is
# shown), sources (crates.io only) are checked offline from Cargo.lock and
# the local registry, in about a second.
#
# Advisories (RustSec: known vulnerabilities) need the RustSec advisory
# database, a git repository on GitHub. This script fetches it when it can;
# when GitHub cannot be reached (a build machine that sees only crates.io
# and Debian's mirrors) it uses a copy fetched before
# ($CARGO_HOME/advisory-dbs, and says how old it is), and with neither it
# prints "advisories: NOT CHECKED" and goes on: the check is then not done,
# and the line says so. EPM_DENY_ADVISORIES=required makes that a failure.
#
# cargo-deny is installed when missing (`cargo install --locked`, the
# version pinned below): it compiles, 3 min 40 s on 2 cores once
# (measured with 0.20.2), then nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never

CARGO_DENY_VERSION=0.20.2

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "== installing cargo-deny $CARGO_DENY_VERSION (compiles it: about 4 minutes, once)"
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --quiet
fi

echo "== cargo deny check licenses bans sources (offline)"
cargo deny --offline --locked check --hide-inclusion-graph licenses bans sources

echo "== cargo deny check advisories"
db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if timeout 120 cargo deny --locked fetch db >/dev/null 2>&1; then
    cargo deny --offline --locked check --hide-inclusion-graph advisories
    echo "advisories: checked against today's RustSec database"
elif compgen -G "$db_dir/*/.git" >/dev/null; then
    copy=$(compgen -G "$db_dir/*/.git" | head -n 1)
    fetched=$(git -C "${copy%/.git}" log -1 --format=%cs 2>/dev/null || echo "an unknown date")
    cargo deny --offline --locked check --hide-inclusion-graph advisories
    echo "advisories: checked against a copy of the RustSec database from $fetched (GitHub unreachable now)"
else
    echo "advisories: NOT CHECKED: the RustSec advisory database (github.com/RustSec/advisory-db) cannot be fetched from here and no copy is in $db_dir"
    if [ "${EPM_DENY_ADVISORIES:-}" = required ]; then
        exit 1
    fi
fi
