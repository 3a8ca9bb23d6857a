#!/usr/bin/env bash
# Debian packages the tests need: redis-server and PostgreSQL (the tests start private
# servers of their own on free ports; nothing needs to be running, and the machine's own
# PostgreSQL is never used), Chromium and its driver (browser tests drive /usr/bin/chromium;
# no browser is downloaded), an emoji font.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
# initdb and postgres live under /usr/lib/postgresql/<major>/bin (not on PATH)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v npm >/dev/null || need+=(npm)  # installs axe-core for the accessibility check
# so screenshots show emoji as people's browsers do
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
