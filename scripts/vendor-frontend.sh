#!/usr/bin/env bash
# Refresh the vendored front-end files in static/vendor/ from the npm registry.
# Nothing is fetched at run time: the files are committed, with their versions and
# sha384 sums in static/vendor/VERSIONS (usable as Subresource Integrity values).
#
#   scripts/vendor-frontend.sh            # the pinned versions below
#   HTMX=2.0.11 scripts/vendor-frontend.sh
set -euo pipefail

HTMX="${HTMX:-2.0.11}"        # htmx.org 2.0.x (htmx 4 renamed the ws/sse attributes)
HTMX_WS="${HTMX_WS:-2.0.4}"   # htmx-ext-ws (not htmx.org's old dist/ext/ws.js)
HTMX_SSE="${HTMX_SSE:-2.2.4}" # htmx-ext-sse

here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "htmx.org@$HTMX" "htmx-ext-ws@$HTMX_WS" "htmx-ext-sse@$HTMX_SSE" >/dev/null
take() { # tarball, file inside the package, name under static/vendor
  mkdir -p "x-$1" && tar xzf "$1" -C "x-$1"
  cp "x-$1/package/$2" "$dest/$3"
}
mkdir -p "$dest"
take "htmx.org-$HTMX.tgz" dist/htmx.min.js htmx.min.js
take "htmx-ext-ws-$HTMX_WS.tgz" dist/ws.min.js ws.min.js
take "htmx-ext-sse-$HTMX_SSE.tgz" dist/sse.min.js sse.min.js

sri() { echo "sha384-$(openssl dgst -sha384 -binary "$dest/$1" | openssl base64 -A)"; }
cat > "$dest/VERSIONS" <<VERSIONS
# Vendored by scripts/vendor-frontend.sh from the npm registry; do not edit by hand.
htmx.min.js  htmx.org@$HTMX      $(sri htmx.min.js)
ws.min.js    htmx-ext-ws@$HTMX_WS     $(sri ws.min.js)
sse.min.js   htmx-ext-sse@$HTMX_SSE    $(sri sse.min.js)
VERSIONS
cat "$dest/VERSIONS"
