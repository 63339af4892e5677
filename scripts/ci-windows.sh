#!/usr/bin/env bash
# CI for Windows, on this Debian machine: cross-builds epm-agent.exe
# (x86_64-pc-windows-gnu, with Debian's MinGW-w64), lints it for that
# target, then runs it under Wine (tests/windows/wine_checks.py): config
# check, `run` reading an emulated ProLAN-501 on a COM port, status --json,
# and the service under Wine's service manager. See docs/windows.md.
#
# Installs what it lacks (the Rust target, gcc-mingw-w64-x86-64, wine64);
# needs root for apt-get, as CI has. Runs without a terminal or X.
# Environment: EPM_WINDOWS_SKIP_SERVICE=1 leaves out the service checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

TARGET=x86_64-pc-windows-gnu
# Its own target folder: the Windows build never invalidates the Linux one.
export CARGO_TARGET_DIR="${EPM_WINDOWS_TARGET_DIR:-$PWD/target/windows}"
OUT="$CARGO_TARGET_DIR/$TARGET/debug"
WINE_PREFIX="$CARGO_TARGET_DIR/wine-prefix"
started=$(date +%s)
step() { echo "== $* ($(($(date +%s) - started)) s)"; }

step "toolchain: rust target $TARGET, MinGW-w64, Wine"
if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
rustup component add clippy >/dev/null 2>&1 || true
if ! command -v x86_64-w64-mingw32-gcc >/dev/null || [ ! -x /usr/lib/wine/wine64 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gcc-mingw-w64-x86-64 wine64 >/dev/null
fi

step "cargo build --target $TARGET"
cargo build --locked --target "$TARGET" --bin epm-agent

step "cargo clippy --target $TARGET -- -D warnings"
# A lint failure fails the script at the end: the Wine checks still run.
clippy=ok
cargo clippy --locked --target "$TARGET" --lib --bins -- -D warnings || clippy=failed

step "the test-only bcryptprimitives.dll (Wine 8 lacks ProcessPrng)"
x86_64-w64-mingw32-gcc -shared -O2 -Wall -Werror \
    -o "$OUT/bcryptprimitives.dll" tests/windows/bcryptprimitives.c -ladvapi32

step "the emulator's own check (the spec's worked examples)"
python3 tests/windows/prolan501.py

step "under Wine ($(/usr/lib/wine/wine64 --version))"
service_flag=()
if [ "${EPM_WINDOWS_SKIP_SERVICE:-}" = 1 ]; then
    service_flag=(--no-service)
fi
python3 tests/windows/wine_checks.py \
    --exe "$OUT/epm-agent.exe" \
    --dll "$OUT/bcryptprimitives.dll" \
    --prefix "$WINE_PREFIX" \
    "${service_flag[@]}"

if [ "$clippy" != ok ]; then
    echo "windows: clippy found warnings for $TARGET (see above)"
    exit 1
fi
step "windows: done"
