#!/usr/bin/env bash
# Install the Debian packages the lab needs, when they are missing: Prometheus and Alertmanager
# (with promtool and amtool), iproute2 for network namespaces and veth pairs, nftables for weak
# links and per-node faults, and faketime for the wall-clock step scenario.
set -euo pipefail

packages=(prometheus prometheus-alertmanager iproute2 nftables faketime)
commands=(prometheus prometheus-alertmanager ip nft faketime)

missing=()
for i in "${!commands[@]}"; do
  command -v "${commands[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
command -v tc >/dev/null 2>&1 || missing+=(iproute2)

if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${missing[*]}; install them as root (apt-get install)" >&2
  exit 1
fi
echo "[setup] installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
