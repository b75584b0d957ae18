#!/usr/bin/env bash
# Installs Prometheus and promtool from Debian's `prometheus` package (the tests run
# `promtool check rules` and start a throwaway Prometheus on loopback). Idempotent: does
# nothing when /usr/bin/promtool already exists.
#
# The package ships an init script that would start a system Prometheus on :9090. We never
# want that: a policy-rc.d that denies every start is kept in place for the install, and
# any daemon the package still managed to start is stopped afterwards.
set -euo pipefail

if [ -x /usr/bin/promtool ] && [ -x /usr/bin/prometheus ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-prometheus: needs root (or sudo)" >&2; exit 1; }
  sudo=(sudo)
fi

policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ]; then
  backup=$(mktemp)
  "${sudo[@]}" cp -p "$policy" "$backup"
fi
restore_policy() {
  if [ -n "$backup" ]; then
    "${sudo[@]}" cp -p "$backup" "$policy"
    rm -f "$backup"
  else
    "${sudo[@]}" rm -f "$policy"
  fi
}
trap restore_policy EXIT
# exit 101 = "action forbidden by policy": invoke-rc.d starts nothing.
printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
"${sudo[@]}" chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
# Refresh the index only when it is missing (a fresh container) or too old to have the package.
if ! apt-cache show prometheus >/dev/null 2>&1; then
  "${sudo[@]}" apt-get update -qq
fi
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus; then
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus
fi

# Belt and braces: whatever started the packaged daemon (systemd on a real host), stop and
# disable it so nothing listens on :9090 behind the tests' backs.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  pidfile=/run/prometheus/prometheus.pid  # the init script's PIDFILE
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    "${sudo[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
fi

/usr/bin/promtool --version | head -1
