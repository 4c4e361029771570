#!/usr/bin/env bash
# Install the Debian packages labnet needs, only those whose command is missing.
set -euo pipefail
declare -A want=(
  [ip]=iproute2 [nsenter]=util-linux [unshare]=util-linux [iptables]=iptables [nft]=nftables
  [etcd]=etcd-server [etcdctl]=etcd-client [bird]=bird2 [tcpdump]=tcpdump [dot]=graphviz
  [iperf3]=iperf3 [curl]=curl [ping]=iputils-ping [pkill]=procps [git]=git
  [dockerd]=docker.io [docker]=docker.io [debootstrap]=debootstrap [cc]=gcc
  [gobgpd]=gobgpd [vtysh]=frr [podman]=podman [busybox]=busybox-static [chromium]=chromium
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -eq 0 ]; then
  echo "sysdeps: all present"
  exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "sysdeps: installing ${pkgs[*]}"
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
# Debian starts services on install. labnet runs its own etcd, BIRD and dockerd (the last with
# no bridge and no iptables rules), so nothing may start in the root network namespace:
# a policy-rc.d that refuses every start, for the length of this install only.
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
[ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
# The services these packages bring, disabled only when this run installed the package: a
# service that was on the machine before is the host's business, never ours.
declare -A services=([etcd-server]="etcd" [bird2]="bird" [docker.io]="docker.socket docker" [gobgpd]="gobgpd"
                     [frr]="frr" [podman]="podman.socket podman")
for pkg in "${pkgs[@]}"; do
  for svc in ${services[$pkg]:-}; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet "$svc" 2>/dev/null; then
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
done
echo "sysdeps: done"
