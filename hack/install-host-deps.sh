#!/usr/bin/env bash
# Installs the Debian packages the local node and the image builds need, once (idempotent):
# containerd, runc and the CNI plugins run the node; Docker and debootstrap build the images;
# gcc compiles the pod sandbox binary; hey (a compiled HTTP load generator) drives the canary
# e2e tests and bench, wrk the benches' closed-loop client; redis-server is Argo CD's cache on
# the node. Needs root (it is, on our machines).
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables conntrack iproute2 socat
          docker.io debootstrap gcc libc6-dev make git hey wrk redis-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go is required: it builds the Kubernetes binaries" >&2; exit 1; }
