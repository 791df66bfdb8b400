#!/usr/bin/env bash
# Debian's chromium, for the tests that open the pages this project writes (the feature browser) in a real
# headless browser. Installs it with apt (as root) when it is missing; exits 3 with one line when it cannot.
#
#   bash scripts/browser.sh     then: chromium --headless --dump-dom <page>
set -euo pipefail
APT_LOG=/tmp/browser_apt.log
say() { echo "browser: $*" >&2; }

if command -v chromium >/dev/null 2>&1; then
  say "chromium is installed ($(chromium --version 2>/dev/null | head -1))"
  exit 0
fi
[[ $(id -u) == 0 ]] || { say "cannot install chromium here: not root"; exit 3; }
command -v apt-get >/dev/null || { say "cannot install chromium here: no apt-get"; exit 3; }
say "installing chromium (apt-get, log in $APT_LOG)"
{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
    fonts-dejavu-core; } >"$APT_LOG" 2>&1 || { say "cannot install chromium here: apt-get failed (see $APT_LOG)"; exit 3; }
say "chromium installed ($(chromium --version 2>/dev/null | head -1))"
