#!/usr/bin/env bash
# Installs the browser that tests/test_space.py drives (headless Chromium through Playwright's Python package).
#
# Playwright's own `playwright install` downloads a browser build from a CDN, which offline machines and CI
# cannot reach; Debian's `chromium` package works instead (the tests launch /usr/bin/chromium directly).
# Run as root (CI) or with sudo. Does nothing when /usr/bin/chromium is already there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_test_browser: $CHROMIUM already installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_test_browser: not root and no sudo; install Debian's 'chromium' package by hand" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium
"$CHROMIUM" --version
