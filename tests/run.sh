#!/usr/bin/env bash
# The README's test command: installs what the tests need (cached between runs) and runs every
# test: formatting, lints, unit and integration tests, then the end-to-end tests against a real
# Kafka-protocol broker (tansu) with DuckDB and pyarrow as independent oracles.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${STOREPULSE_CACHE:-$HOME/.cache/storepulse}"
tools="$cache/tools"
venv="$cache/venv"
tansu_version="0.6.0"

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
missing=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

step "Prometheus server and promtool (Debian)"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
# Debian starts the packaged service; the tests run their own servers.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi

step "Kafka-protocol broker (tansu $tansu_version)"
if ! "$tools/bin/tansu" --version 2>/dev/null | grep -q "$tansu_version"; then
  # Memory and SQLite storage engines; the default features carry none.
  cargo install tansu --version "$tansu_version" --locked --features dynostore,libsql --root "$tools"
fi

step "Python tools (DuckDB, pyarrow, deltalake, polars, fastavro, confluent-kafka, moto, pytest)"
stamp="$venv/.requirements.sha256"
want="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r tests/requirements.txt
  echo "$want" >"$stamp"
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

step "unit and integration tests (embedded mock Kafka cluster)"
cargo test --locked

step "end-to-end tests (tansu broker, DuckDB oracle)"
# `cargo test` built the binary, with the tests' dependency features: a `cargo build` here
# would compile most dependencies a third time.
test -x target/debug/storepulse
export STOREPULSE_BIN="$root/target/debug/storepulse"
export TANSU_BIN="$tools/bin/tansu"
"$venv/bin/python" -m pytest tests/e2e -q -p no:cacheprovider
