#!/usr/bin/env bash
# Builds the Debian package and checks it: the files and their modes
# (`dpkg-deb -c`), the control data (`dpkg-deb -I`/`-e`: conffiles, the
# maintainer scripts), that the shipped configuration passes `config check`,
# and that the packaged unit passes `systemd-analyze verify`.
#
#   scripts/ci-package.sh            # CI: packages the dev-profile binary
#   scripts/ci-package.sh --release  # what you ship: the release build
#
# By default the .deb holds the dev-profile binary that `cargo test` has
# already built (`cargo deb --profile dev --no-build`, stripped; cargo-deb
# 3.8 warns that the dev profile is unsupported, and does it), so CI adds
# seconds, not a four-minute release build: run it after scripts/test.sh.
# That package checks the packaging; it is not one to hand out (no
# optimisation, debug assertions on; its version ends in -0~dev). Ship what
# `--release` (or plain `cargo deb --locked`) makes:
# target/debian/epm-agent_<version>-1_<arch>.deb. cargo-deb deletes the
# other versions of the package in target/debian at every run.
#
# On a bare Debian 12 machine it installs what is missing: cargo-deb (the
# version pinned below, `cargo install --locked`, about 2-3 minutes once)
# and Debian's systemd package (for systemd-analyze; installing it does not
# make systemd the init). Needs root, or password-less sudo, only for that
# apt-get. Runs with CI=true and no standard input. Apart from those
# installs it writes only under target/ and a temporary folder: nothing is
# installed on this machine, the unit is verified inside the unpacked
# package (see verify_unit).
#
# Timings (2 cores): warm, after scripts/test.sh, 5-10 s; cold, cargo-deb
# missing, about 2 minutes more; --release, a release build more.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never

CARGO_DEB_VERSION=3.8.0
# `systemd-analyze verify` lines that are not errors in the unit. Empty so
# far: in a container without a running systemd, systemd 252 prints nothing
# for a clean unit once it sees the files under --root (see
# verify_unit). Add an extended regex here, with the reason, if it must.
VERIFY_IGNORED_LINES=''

profile=dev
work=
case "${1:-}" in
    "") ;;
    --release) profile=release ;;
    *)
        echo "usage: $0 [--release]" >&2
        exit 2
        ;;
esac

log() { echo "== $*"; }
fail() {
    echo "ci-package: FAILED: $*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        fail "need root (or sudo) to run: $*"
    fi
}

install_tools() {
    command -v dpkg-deb >/dev/null || fail "dpkg-deb not found: this script is for Debian and its derivatives"
    if ! command -v systemd-analyze >/dev/null; then
        log "installing Debian's systemd package (for systemd-analyze)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd </dev/null
    fi
    if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
        log "installing cargo-deb $CARGO_DEB_VERSION"
        cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
    fi
}

# Prints the path of the .deb it made.
build_package() {
    local output
    if [ "$profile" = dev ]; then
        # The binary `cargo test` builds for the integration tests: after
        # scripts/test.sh this builds nothing. (`cargo build` would build
        # tokio and everything above it again without the dev-dependencies'
        # features, a minute or two more on a cold CI machine.)
        log "cargo test --no-run (dev profile; reuses the test build)" >&2
        cargo test --locked --no-run >&2
        log "cargo deb --profile dev --no-build (cargo-deb warns that dev is unsupported: expected)" >&2
        # Revision 0~dev: never taken for the release package (its file
        # name differs, and any release of the same version upgrades it).
        output=$(cargo deb --locked --no-build --profile dev --strip --fast --deb-revision 0~dev)
    else
        log "cargo deb (release profile)" >&2
        output=$(cargo deb --locked)
    fi
    # cargo-deb prints the package's path last.
    local deb
    deb=$(printf '%s\n' "$output" | tail -n 1)
    [ -f "$deb" ] || fail "cargo deb did not name a package file (it printed: $output)"
    echo "$deb"
}

# expect_entry LISTING MODE PATH: `dpkg-deb -c` shows PATH with MODE, owned
# by root (cargo-deb writes numeric ids: `0/0`).
expect_entry() {
    local listing=$1 mode=$2 path=$3
    awk -v mode="$mode" -v path="./$path" '$1 == mode && ($2 == "0/0" || $2 == "root/root") && $6 == path { found = 1 } END { exit !found }' <<<"$listing" \
        || fail "the package lacks $mode root:root /$path; it has:
$(grep -F "./$path" <<<"$listing" || echo '  (no such path)')"
}

check_contents() {
    local deb=$1 listing
    log "dpkg-deb -c $deb"
    listing=$(dpkg-deb -c "$deb")
    echo "$listing"
    expect_entry "$listing" -rwxr-xr-x usr/bin/epm-agent
    expect_entry "$listing" -rw-r--r-- lib/systemd/system/epm-agent.service
    expect_entry "$listing" -rw-r----- etc/epm-agent/epm-agent.toml
    expect_entry "$listing" -rw-r--r-- usr/share/doc/epm-agent/README.md
    expect_entry "$listing" -rw-r--r-- usr/share/doc/epm-agent/copyright
    expect_entry "$listing" -rw-r--r-- usr/share/doc/epm-agent/examples/epm-agent.toml
    local doc
    for doc in docs/*; do
        expect_entry "$listing" -rw-r--r-- "usr/share/doc/epm-agent/$doc"
    done
    expect_entry "$listing" -rw-r--r-- usr/share/doc/epm-agent/docs/install.md
    # Shell completions and the manual page (dist/, scripts/dist-files.sh);
    # cargo-deb compresses the manual page.
    expect_entry "$listing" -rw-r--r-- usr/share/bash-completion/completions/epm-agent
    expect_entry "$listing" -rw-r--r-- usr/share/zsh/vendor-completions/_epm-agent
    expect_entry "$listing" -rw-r--r-- usr/share/fish/vendor_completions.d/epm-agent.fish
    expect_entry "$listing" -rw-r--r-- usr/share/man/man1/epm-agent.1.gz
}

check_control() {
    local deb=$1 control=$2
    log "dpkg-deb -I $deb"
    dpkg-deb -I "$deb"
    [ "$(dpkg-deb -f "$deb" Package)" = epm-agent ] || fail "Package is not epm-agent"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$(dpkg --print-architecture)" ] || fail "Architecture is not this machine's"
    local version
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
    case "$(dpkg-deb -f "$deb" Version)" in
        "$version"-*) ;;
        *) fail "Version $(dpkg-deb -f "$deb" Version) does not start with Cargo.toml's $version" ;;
    esac
    local depends
    depends=$(dpkg-deb -f "$deb" Depends)
    grep -q 'libc6' <<<"$depends" || fail "Depends ($depends) lacks libc6"
    ! grep -q 'libudev' <<<"$depends" || fail "Depends ($depends) names libudev: serialport must build without it"

    dpkg-deb -e "$deb" "$control"
    log "conffiles"
    cat "$control/conffiles"
    grep -qx '/etc/epm-agent/epm-agent.toml' "$control/conffiles" \
        || fail "conffiles does not list /etc/epm-agent/epm-agent.toml"
    local script
    for script in postinst prerm postrm; do
        [ -x "$control/$script" ] || fail "the package has no executable $script"
        cmp -s "$control/$script" "debian/$script" || fail "the packaged $script differs from debian/$script"
        sh -n "$control/$script" || fail "$script is not valid sh"
    done
    log "maintainer scripts: postinst prerm postrm present, executable, valid sh"
}

# Checks what the package installs, from the files extracted to ROOT.
check_installed_files() {
    local root=$1
    cmp -s "$root/lib/systemd/system/epm-agent.service" systemd/epm-agent.service \
        || fail "the packaged unit differs from systemd/epm-agent.service"
    cmp -s "$root/etc/epm-agent/epm-agent.toml" config/epm-agent.toml \
        || fail "the packaged configuration differs from config/epm-agent.toml"
    log "the packaged binary: --version, config check on the packaged configuration"
    "$root/usr/bin/epm-agent" --version
    # The packaged manual page and completions are this binary's.
    zcat "$root/usr/share/man/man1/epm-agent.1.gz" | cmp -s - <("$root/usr/bin/epm-agent" man) \
        || fail "the packaged manual page differs from \`epm-agent man\` (run scripts/dist-files.sh)"
    cmp -s "$root/usr/share/bash-completion/completions/epm-agent" <("$root/usr/bin/epm-agent" completions bash) \
        || fail "the packaged bash completions differ from \`epm-agent completions bash\` (run scripts/dist-files.sh)"
    # The example's token_env is unset here: config check warns, and passes.
    "$root/usr/bin/epm-agent" config check --config "$root/etc/epm-agent/epm-agent.toml" \
        || fail "the shipped configuration does not pass config check"
}

# systemd-analyze verify needs every Exec*= program to exist, and the units
# the service depends on (sysinit.target, network-online.target, ...). The
# package's own files are unpacked to ROOT and verified there with --root:
# the unit and the binary are the packaged ones, no file outside ROOT is
# touched, and no running systemd is needed (none runs in a container).
# ROOT gets copies of this machine's systemd units (never over the
# package's) and of Exec*= programs the package does not ship (such as
# /bin/kill for ExecReload).
verify_unit() {
    local root=$1 unit=/lib/systemd/system/epm-agent.service host_units=
    local dir
    for dir in /usr/lib/systemd/system /lib/systemd/system; do
        if [ -e "$dir/sysinit.target" ]; then
            host_units=$dir
            break
        fi
    done
    [ -n "$host_units" ] || fail "this machine has no systemd units (sysinit.target) to verify against"
    mkdir -p "$root/usr/lib/systemd/system"
    local file name
    for file in "$host_units"/*; do
        name=${file##*/}
        case "$name" in
            epm-agent*) continue ;; # an installed copy must not stand in for the package's
        esac
        [ -e "$root/usr/lib/systemd/system/$name" ] || cp -a "$file" "$root/usr/lib/systemd/system/"
    done
    local program
    while read -r program; do
        case "$program" in
            /*) ;;
            *) continue ;; # a bare name: systemd searches its own path
        esac
        if [ ! -e "$root$program" ]; then
            case "$program" in
                */epm-agent*) fail "the unit runs $program, which the package does not ship" ;;
            esac
            [ -x "$program" ] || fail "the unit runs $program, which neither the package nor this machine has"
            mkdir -p "$root$(dirname "$program")"
            cp -L "$program" "$root$program"
        fi
    done < <(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$root$unit" | sort -u)
    log "systemd-analyze verify --man=no --root=<the unpacked package> $unit"
    local output status=0
    output=$(systemd-analyze verify --man=no --root="$root" "$unit" 2>&1) || status=$?
    [ -z "$output" ] || echo "$output"
    local errors=$output
    if [ -n "$VERIFY_IGNORED_LINES" ]; then
        errors=$(grep -Ev "$VERIFY_IGNORED_LINES" <<<"$output" || true)
    fi
    # Unknown keys and unparsable values are only warnings to systemd (it
    # ignores the line and loads the rest): here they fail the check.
    if [ "$status" != 0 ] || [ -n "$errors" ]; then
        fail "systemd-analyze verify: exit $status, output above"
    fi
    log "systemd-analyze verify: clean"
}

main() {
    install_tools
    local deb
    deb=$(build_package)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    check_contents "$deb"
    check_control "$deb" "$work/control"
    dpkg-deb -x "$deb" "$work/root"
    check_installed_files "$work/root"
    verify_unit "$work/root"
    log "package OK: $deb ($(du -h "$deb" | cut -f1), ${SECONDS} s)"
}

# Sourcing the script (to try one check by hand) defines the checks only.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main
fi
