#!/usr/bin/env bash
# Install the headless browser used by the registry UI test: Debian's `chromium` and
# `chromium-driver` (versions always match) plus the Python `selenium` driver in .venv.
# Idempotent: returns in well under a second when everything is already there.
#
#   bash deploy/install_browser.sh            # uses .venv/bin/pip
#   PIP=/path/to/pip bash deploy/install_browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
PY=${PY:-$(dirname "$PIP")/python}

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "install_browser: need root (or sudo) to apt-get install ${need_apt[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    echo "install_browser: apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! "$PY" -c "import selenium" 2>/dev/null; then
    echo "install_browser: pip install selenium"
    if command -v flock >/dev/null; then
        flock /tmp/lolcats-pip.lock "$PIP" install -q "selenium>=4.20"
    else
        "$PIP" install -q "selenium>=4.20"
    fi
fi
echo "install_browser: ok ($(chromium --version 2>/dev/null | head -1); $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2))"
