#!/usr/bin/env bash
# Installs what the real local nodes and the image builds need, from Debian's packages:
# runc + the CNI plugins (the nodes' containerd is built from its Go module:
# hack/build-binaries.sh), socat (the harness's
# stand-in for the load balancer in front of the apiserver), iproute2 (network namespaces),
# the daemonless image tools (mmdebstrap for the base image, buildah/podman to build,
# skopeo to push an OCI layout as it is),
# and dbus (each node's system bus).
# Idempotent: installs only the packages that are missing; never starts a daemon.
set -euo pipefail

packages=(runc containernetworking-plugins socat iproute2 util-linux
          mmdebstrap buildah podman skopeo uidmap dbus)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-node-packages: needs root (or sudo)" >&2; exit 1; }
  sudo=(sudo)
fi
# A policy-rc.d that forbids every start: a packaged daemon (dbus) must never run as a
# system daemon beside the nodes' own (exit 101 = "action forbidden by policy").
policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ]; then backup=$(mktemp); "${sudo[@]}" cp -p "$policy" "$backup"; fi
restore_policy() {
  if [ -n "$backup" ]; then "${sudo[@]}" cp -p "$backup" "$policy"; rm -f "$backup"
  else "${sudo[@]}" rm -f "$policy"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
"${sudo[@]}" chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
