#!/usr/bin/env bash
# Run the whole appliance locally in dev mode: state in ./.phoenix-dev,
# loopback listeners on unprivileged ports, self-signed TLS. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins

mkdir -p .phoenix-dev
config=.phoenix-dev/phoenix.toml
if [ ! -f "$config" ]; then
  cat >"$config" <<'TOML'
# Phoenix dev config. Empty means the full appliance with dev defaults;
# see docs/configuration.md for every key. Apply edits with:
#   target/release/phoenixctl --socket .phoenix-dev/run/control.sock reload
TOML
fi

cat <<INFO
Phoenix dev stack (config: $config, state: .phoenix-dev/)
  health:      http://127.0.0.1:8081/health   (also /readyz /livez /metrics)
  console:     https://127.0.0.1:8443/        (self-signed certificate; user admin,
               password in .phoenix-dev/state/secrets/initial-admin-password)
  API:         https://127.0.0.1:8443/api/v1/  (docs/api.md)
  Prometheus:  http://127.0.0.1:19090
  agents:      https://127.0.0.1:6700            (the agent listener; see docs/agent.md)
  PostgreSQL:  127.0.0.1:15432
  status:      target/release/phoenixctl --socket .phoenix-dev/run/control.sock status
INFO
exec target/release/phoenix-supervisor run --dev --config "$config"
