#!/usr/bin/env bash
# Runs every test: starts the brokers (installing them when missing) and the 3-node clusters
# the cluster tests kill nodes of, then the unit and integration tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
scripts/clusters.sh start
# The cluster tests kill nodes of those clusters: they run only when told so.
export HOOKBUS_TEST_CLUSTERS=1
cargo test --locked "$@"
