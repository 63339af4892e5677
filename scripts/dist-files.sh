#!/usr/bin/env bash
# Writes what the Debian package ships besides the binary and the docs:
# shell completions (bash, zsh, fish) and the manual page, made by the
# binary's hidden `completions SHELL` and `man` commands from its clap
# definition, into dist/.
#
#   scripts/dist-files.sh                 # builds the dev binary, then writes
#   scripts/dist-files.sh PATH/epm-agent  # writes with that binary
#
# The files are committed rather than made at packaging time, so a plain
# `cargo deb --locked` (which runs no generator and has no build script to
# hook into: the command line lives in the binary, out of a build.rs's
# reach) packages them as well as scripts/ci-package.sh does. The
# integration test `package::the_shipped_completions_and_man_page_are_current`
# fails when they differ from what the binary makes: run this script after
# changing a command or an option.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=${1:-}
if [ -z "$binary" ]; then
    cargo build --locked --quiet --bin epm-agent
    binary=target/debug/epm-agent
fi
mkdir -p dist/completions dist/man
"$binary" completions bash >dist/completions/epm-agent.bash
"$binary" completions zsh >dist/completions/_epm-agent
"$binary" completions fish >dist/completions/epm-agent.fish
"$binary" man >dist/man/epm-agent.1
echo "dist-files: wrote dist/completions/{epm-agent.bash,_epm-agent,epm-agent.fish} and dist/man/epm-agent.1"
