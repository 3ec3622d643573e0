#!/usr/bin/env bash
# Install what Phoenix needs to build, run and test on Debian/Ubuntu:
# PostgreSQL 15, pgBackRest, Prometheus, the Pushgateway, runit (benchmark peer),
# util-linux (unshare), pebble (ACME), Chromium and ChromeDriver (console tests), schemathesis, moto and kubernetes-validate (PyPI), kubectl (kustomize) and the `phoenix`
# system user.
# Idempotent.
set -euo pipefail

packages=(postgresql pgbackrest prometheus prometheus-pushgateway prometheus-alertmanager runit util-linux procps curl ca-certificates
  # the boot test: a Debian root file system, kernel modules, an initramfs, qemu (TCG)
  debootstrap busybox-static e2fsprogs cpio kmod qemu-system-x86
  # the Nix checks: nix-instantiate (Debian's Nix); systemd-analyze for the agent's unit
  nix-bin systemd
  # ACME tests: pebble, a test CA, and pebble-challtestsrv, its DNS server
  pebble
  # the agent benchmark's peer: the usual per-process exporter
  prometheus-process-exporter
  # the console's browser tests: headless Chromium driven over WebDriver
  chromium chromium-driver)

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  need_root apt-get update -q
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  echo "setup: PostgreSQL 15 is required (/usr/lib/postgresql/15/bin); this distribution ships another major version." >&2
  echo "       Set [postgres] bin_dir in phoenix.toml to its bin directory, or use Debian 12." >&2
fi

# Services run as their own users; postgres and prometheus come with their packages.
if ! getent passwd phoenix >/dev/null; then
  echo "setup: creating system user phoenix"
  need_root useradd --system --home-dir /var/lib/phoenix --no-create-home --shell /usr/sbin/nologin phoenix
fi

# The Kubernetes manifests are rendered with kubectl's kustomize and checked
# against the Kubernetes schemas by kubernetes-validate (PyPI).
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: installing kubernetes-client (kubectl)"
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate (PyPI)"
  python3 -m pip --version >/dev/null 2>&1 ||
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kubernetes-validate ||
    { echo "setup: pip install kubernetes-validate failed" >&2; exit 1; }
fi

# schemathesis fuzzes the API from its OpenAPI document in the test suite.
if ! python3 -c "import schemathesis" 2>/dev/null; then
  echo "setup: installing schemathesis (PyPI)"
  python3 -m pip --version >/dev/null 2>&1 ||
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip
  # Debian's own Python refuses system-wide pip installs unless told otherwise.
  python3 -m pip install --quiet schemathesis 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages schemathesis ||
    { echo "setup: pip install schemathesis failed" >&2; exit 1; }
fi

# moto's server mode stands in for S3 (behind TLS) in the offsite-copy tests.
if ! python3 -c "import moto.server" 2>/dev/null || ! command -v moto_server >/dev/null; then
  echo "setup: installing moto[server] (PyPI)"
  python3 -m pip --version >/dev/null 2>&1 ||
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip
  python3 -m pip install --quiet 'moto[server]' 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages 'moto[server]' ||
    { echo "setup: pip install moto[server] failed" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found. Install a Rust toolchain (1.91.1 or newer), e.g. with rustup, then run this again." >&2
  exit 1
fi

# The Nix checks (tests/tests/nix.rs): nixpkgs-fmt and deadnix from
# crates.io (each builds in under 30 s on 2 cores); nix-instantiate comes
# with the packages above.
for tool in nixpkgs-fmt deadnix; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup: installing $tool (crates.io)"
    cargo install --locked --quiet "$tool"
  fi
done
