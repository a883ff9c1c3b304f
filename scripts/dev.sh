#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root):
#   scripts/dev.sh demo    set up, then wire two pods and a volume and show it
#   scripts/dev.sh test    set up, then run the whole test suite
#   scripts/dev.sh bench   set up, then run the benchmarks against the reference plugins
#   scripts/dev.sh setup   only install system packages and the virtualenv
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
    iproute2 iputils-ping procps nftables iptables kmod util-linux mount e2fsprogs xfsprogs
    containernetworking-plugins etcd-server etcd-client iperf3
    python3 python3-venv python3-dev
    glusterfs-server glusterfs-client
    dnsmasq-base containerd podman runc gcc libc6-dev busybox-static curl
)

setup() {
    local missing=()
    for p in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
}

case "${1:-}" in
    setup) setup ;;
    demo)  setup; exec .venv/bin/podplumb demo ;;
    test)  setup; shift; exec .venv/bin/python -m pytest "$@" ;;
    bench) setup; shift; exec .venv/bin/python -m bench "$@" ;;
    *) echo "usage: $0 {demo|test|bench|setup}" >&2; exit 2 ;;
esac
