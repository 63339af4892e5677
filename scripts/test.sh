#!/usr/bin/env bash
# The test command of the README: builds and runs every test (unit, codec
# properties, pseudo-terminal integration, crash and replug tests, and the
# tests against real PostgreSQL and Mosquitto servers and a headless Chromium).
# Needs a Rust toolchain; scripts/test-servers.sh installs the servers' and
# the browser's Debian packages first when they are missing (as root, with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/test-servers.sh
cargo test --locked "$@"
