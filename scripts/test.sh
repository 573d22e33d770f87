#!/usr/bin/env bash
# Runs every test: starts the brokers (installing them when missing), then the unit and
# integration tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo test --locked "$@"
