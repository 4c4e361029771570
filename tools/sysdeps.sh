#!/usr/bin/env bash
# Install the Debian packages labnet needs, only those whose command is missing.
set -euo pipefail
declare -A want=(
  [ip]=iproute2 [nsenter]=util-linux [unshare]=util-linux [iptables]=iptables [nft]=nftables
  [etcd]=etcd-server [etcdctl]=etcd-client [bird]=bird2 [tcpdump]=tcpdump [dot]=graphviz
  [iperf3]=iperf3 [curl]=curl [ping]=iputils-ping [pkill]=procps [git]=git
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
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# Debian starts services on install; labnet runs its own etcd and BIRD inside lab namespaces.
for svc in etcd bird; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done
echo "sysdeps: done"
