#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# builds everything, then runs unit and black-box tests against real
# PostgreSQL, Prometheus and Pushgateway servers that the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
