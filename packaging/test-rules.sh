#!/usr/bin/env bash
# Checks the Prometheus alert rules in packaging/monitoring with Debian's
# promtool: syntax (check rules) and behaviour (test rules, on the unit
# tests beside them). Called by .ci/run; installs prometheus when needed.
# That the rules and the dashboard only name exported metrics is checked
# by gateway/packaging_metrics_test.go.
set -euo pipefail
cd "$(dirname "$0")/monitoring"
if ! command -v promtool >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
echo "== $(promtool --version 2>&1 | head -1)"
promtool check rules edgegw-alerts.yml
promtool test rules edgegw-alerts.test.yml
