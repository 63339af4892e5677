#!/usr/bin/env bash
# The test command of the README: builds and runs every test (unit, codec
# properties, pseudo-terminal integration, crash and replug tests).
# Needs a Rust toolchain only; installs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
