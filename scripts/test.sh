#!/usr/bin/env bash
# Runs every test of the workspace, as CI does (.ci/run calls this script).
#
# What the tests need is prepared here or reported as a clear error, never
# skipped: the browser test needs Debian's chromium and chromedriver, which
# this script installs with apt-get when it runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

need_browser() {
  [ -x "${CHROMIUM:-/usr/bin/chromium}" ] && [ -x "${CHROMEDRIVER:-/usr/bin/chromedriver}" ]
}

if ! need_browser; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium and chromium-driver for the browser test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "error: the browser test needs chromium and chromedriver." >&2
    echo "       install them with: sudo apt-get install -y chromium chromium-driver" >&2
    echo "       (or point CHROMIUM and CHROMEDRIVER at your own binaries)" >&2
    exit 1
  fi
fi

say "formatting"
cargo fmt --all --check

say "building (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

say "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "tests"
cargo test --workspace --locked "$@"
