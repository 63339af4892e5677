#!/usr/bin/env bash
# The real servers the sink integration tests run (tests/servers/mod.rs):
# PostgreSQL (initdb, pg_ctl, psql) and Mosquitto 2 (mosquitto,
# mosquitto_passwd, mosquitto_pub, mosquitto_sub), and the headless browser
# the local page's test drives (chromium, chromedriver), from Debian's
# packages.
# Installs whatever is missing with apt-get (as root, non-interactive; the
# package lists are updated first only when something is missing), and does
# nothing — in well under a second — when all are there. Idempotent.
#
# The tests start their own servers in temporary folders on free ports; the
# system services the packages bring must not run beside them: they are kept
# from starting during the install (policy-rc.d), and stopped (and disabled
# under systemd) if they run anyway.
set -euo pipefail

packages=(postgresql mosquitto mosquitto-clients chromium chromium-driver)

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "test-servers.sh: missing packages ${missing[*]}: run this script as root" >&2
    exit 1
fi

echo "test-servers.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive

# Debian's invoke-rc.d and deb-systemd-invoke start no service while
# policy-rc.d exits 101. Only a policy this script put there is removed.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Put here by epm-agent scripts/test-servers.sh for one install.\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=true
fi
remove_policy() {
    if [ "$own_policy" = true ]; then
        rm -f "$policy"
    fi
}
trap remove_policy EXIT

apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Belt and braces: whatever started anyway is stopped.
if [ -d /run/systemd/system ]; then
    systemctl disable --now --quiet postgresql.service mosquitto.service 2>/dev/null || true
fi
if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _port status _rest; do
        if [ "$status" = online ]; then
            pg_ctlcluster "$version" "$cluster" stop || true
        fi
    done
fi
if [ -f /run/mosquitto/mosquitto.pid ]; then
    kill "$(cat /run/mosquitto/mosquitto.pid)" 2>/dev/null || true
fi
