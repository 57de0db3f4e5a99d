#!/usr/bin/env bash
# Install what tests/test_serve.py's browser test needs: Debian's Chromium, driven by the `playwright`
# pip package (a dev dependency) through executable_path=/usr/bin/chromium. Playwright's own browser
# download is not used: CI cannot reach it. Safe to run again: it does nothing once Chromium is there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "ci_browser: $(/usr/bin/chromium --version 2>/dev/null | head -n1) already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# fonts-dejavu-core: a font for the page's text in screenshots
$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
echo "ci_browser: installed $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
