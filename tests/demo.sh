#!/usr/bin/env bash
# `make demo`: build a signed two-architecture bundle from a local stand-in release server, verify
# it and install it into ./demo-root with the standalone installer. No internet needed.
#
#   tests/demo.sh            (run from anywhere; `make demo` runs `make install` first)
#
# Outputs: demo/site.{key,pub} (a fresh key each run), demo/server/ (the stand-in release),
# demo/cache/ (the download cache, kept so a second run shows cache hits), demo/dist/ (the bundle,
# its installer and SHA256SUMS) and demo-root/ (the installed tree). `make clean` removes them.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PY=$BIN/python
K3BUNDLE=$BIN/k3bundle
HOST_PYTHON=${HOST_PYTHON:-python3}   # the "air-gapped host": plain python3, no venv, -I
VERSION=v1.31.4+k3s1
IMAGE_SIZE=$((4 * 1024 * 1024))       # bytes per stand-in airgap image tarball

for tool in "$PY" "$K3BUNDLE"; do
    [ -x "$tool" ] || { echo "demo: $tool is missing; run 'make install' first" >&2; exit 1; }
done

START=$(date +%s.%N)
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$START" "$(date +%s.%N)"; }
step() { printf '\n== %s  [%s s]\n' "$1" "$(elapsed)"; }

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
on_exit() {
    local rc=$?
    stop_server
    if [ "$rc" -ne 0 ]; then
        echo >&2
        echo "demo: FAILED (exit $rc); server log: demo/server.log" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Cleaning the previous run (keeping the download cache demo/cache/)"
rm -rf demo-root demo/dist demo/server demo/server.json demo/server.log demo/site.key demo/site.pub
mkdir -p demo/cache
cached_before=$({ find demo/cache/sha256 -type f 2>/dev/null || true; } | wc -l)
echo "demo/cache holds $cached_before verified file(s) from earlier runs"

step "Starting the stand-in k3s release + channel server on 127.0.0.1 (a free port)"
"$PY" tests/release_server.py --dir demo/server --port 0 --versions "$VERSION" \
    --arches amd64,arm64 --formats tar.zst --image-size "$IMAGE_SIZE" --print-url \
    >demo/server.json 2>demo/server.log &
SERVER_PID=$!
for _ in $(seq 1 300); do   # up to 30 s: it first generates the release files
    [ -s demo/server.json ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat demo/server.log >&2; echo "demo: the server died" >&2; exit 1; }
    sleep 0.1
done
[ -s demo/server.json ] || { echo "demo: the server printed no URLs within 30 s" >&2; exit 1; }
url() { "$PY" -c "import json, sys; print(json.load(open('demo/server.json'))[sys.argv[1]])" "$1"; }
RELEASE_URL=$(url release_url)
CHANNEL_URL=$(url channel_url)
echo "server pid $SERVER_PID"
echo "  release downloads: $RELEASE_URL/$VERSION/..."
echo "  channel server:    $CHANNEL_URL/stable"
echo "  serving demo/server/$VERSION/:"
(cd "demo/server/$VERSION" && ls -l | sed 1d | sed 's/^/    /')

step "k3bundle keygen -o demo/site  (a fresh Ed25519 signing key)"
"$K3BUNDLE" keygen -o demo/site

step "k3bundle build --channel stable --arch amd64 --arch arm64 --sign-key demo/site.key ..."
"$K3BUNDLE" build --channel stable --arch amd64 --arch arm64 --sign-key demo/site.key \
    --release-url "$RELEASE_URL" --channel-url "$CHANNEL_URL" \
    --cache-dir demo/cache -o demo/dist
BUNDLE=$(ls demo/dist/*.tar)
echo
ls -l demo/dist

if command -v sha256sum >/dev/null; then
    step "sha256sum -c SHA256SUMS  (the copy on the stick is intact)"
    (cd demo/dist && sha256sum -c SHA256SUMS)
fi

# From here on only what would be on the USB stick, run by a bare python3 in isolated mode.
step "$HOST_PYTHON -I demo/dist/k3bundle-install.pyz verify $BUNDLE --pubkey demo/site.pub"
"$HOST_PYTHON" -I demo/dist/k3bundle-install.pyz verify "$BUNDLE" --pubkey demo/site.pub

case "$(uname -m)" in
    aarch64 | arm64) ARCH=arm64 ;;
    *) ARCH=amd64 ;;
esac
step "$HOST_PYTHON -I demo/dist/k3bundle-install.pyz install $BUNDLE --pubkey demo/site.pub --root demo-root --arch $ARCH"
"$HOST_PYTHON" -I demo/dist/k3bundle-install.pyz install "$BUNDLE" --pubkey demo/site.pub \
    --root demo-root --arch "$ARCH"

step "The installed tree under demo-root/"
if command -v tree >/dev/null; then
    tree -a -p -s demo-root
else
    find demo-root \( -type l -printf '%M %10s  %p -> %l\n' \) -o -printf '%M %10s  %p\n' \
        | sort -k3
fi
echo
echo "demo-root/usr/local/bin/k3s --version says: $(demo-root/usr/local/bin/k3s --version)"

stop_server
cached_after=$(find demo/cache/sha256 -type f | wc -l)
cat <<EOF

== What happened  [$(elapsed) s in all]
1. A stand-in of GitHub's k3s release downloads and of update.k3s.io ran on 127.0.0.1. Its
   "k3s binaries" are tiny shell scripts labelled STAND-IN and its airgap image tarballs are
   $((IMAGE_SIZE / 1024 / 1024)) MiB of pseudo-random bytes: nothing here is real k3s.
2. k3bundle build resolved channel "stable" to $VERSION, fetched sha256sum-<arch>.txt for amd64
   and arm64, and downloaded each arch's binary and image tarball into demo/cache/, checked
   against those sums; files already in the cache are not downloaded again (it held
   $cached_before verified file(s) before this run, $cached_after now). It then wrote ONE tar bundle
   whose manifest is signed with demo/site.key, plus k3bundle-install.pyz and SHA256SUMS.
3. The standalone installer (python3 -I, standard library only) checked the signature against
   demo/site.pub and every payload byte, then installed the $ARCH half into demo-root/ as it
   would into / on an air-gapped host: the binary and its kubectl/crictl/ctr links, the images
   where containerd imports them, the systemd unit (enabled by a link; with --root nothing is
   started) and an install record.
Run it again: the key and the outputs are made afresh; the downloads come from demo/cache/.
EOF
