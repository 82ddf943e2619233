#!/usr/bin/env bash
# Builds the container image without a registry and runs it (issue 9).
#
#   bash scripts/image-check.sh            (as root; Debian bookworm host)
#
# 1. A Debian bookworm base made with debootstrap (minbase), cached under $CACHE, so a rerun
#    skips it. It stands in for debian:bookworm-slim through the Dockerfile's BASE_IMAGE arg.
# 2. `cargo build --release --locked --bin coexist`, then the Dockerfile's `runtime-prebuilt`
#    target with buildah (vfs storage, chroot isolation, a storage root of its own under $CACHE).
# 3. `buildah run` on the image: `coexist --version`, then the image's own command
#    (`coexist run` on the bundled config, in-memory queue) probed from the host: GET /healthz
#    -> 200, a Meta webhook signed here with openssl -> 200, a wrong signature -> 403, no
#    signature -> 401, a WAHA (sha512) webhook -> 200, and the process stops on SIGTERM.
#
# Needs: buildah, debootstrap, curl, openssl, and Debian's mirror (apt-get installs the missing
# tools when run as root). Environment: CACHE (default /var/tmp/coexist-image-check),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), PORT (default: a free one),
# SKIP_CARGO=1 (use target/release/coexist as it is), KEEP_IMAGE=1 (leave the images).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

CACHE=${CACHE:-/var/tmp/coexist-image-check}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_TAG=localhost/coexist-check/debian:bookworm-minbase
IMAGE_TAG=localhost/coexist-check/coexist:latest
APP_SECRET=image-check-app-secret
WAHA_KEY=image-check-waha-key

t0=$(date +%s)
step() { printf '\n== [%3ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

need=()
for tool in buildah debootstrap curl openssl; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || fail "missing ${need[*]} (install: apt-get install -y buildah debootstrap curl openssl)"
  step "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ $(id -u) == 0 ]] || fail "debootstrap and chroot isolation need root"

mkdir -p "$CACHE"
# A storage of its own: vfs works anywhere (no overlay mounts), and nothing else on the machine
# shares it or its locks.
bah() { buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs "$@"; }

# ---------------------------------------------------------------- 1. the base image
base_tar=$CACHE/debian-bookworm-minbase.tar
if [[ ! -s $base_tar ]]; then
  step "debootstrap --variant=minbase bookworm ($DEBIAN_MIRROR)"
  rootfs=$CACHE/rootfs.tmp
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; fail "debootstrap (log: $CACHE/debootstrap.log)"; }
  # The sources of debian:bookworm-slim (debootstrap writes only bookworm main).
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  rm -rf "$rootfs"
  bah rmi -f "$BASE_TAG" >/dev/null 2>&1 || true
fi
if ! bah inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
  step "importing the base as $BASE_TAG"
  ctr=$(bah from scratch)
  bah add "$ctr" "$base_tar" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash "$ctr"
  bah commit --quiet --rm "$ctr" "$BASE_TAG" >/dev/null
fi
echo "base: $(bah images --noheading --format '{{.Name}}:{{.Tag}} {{.Size}}' "$BASE_TAG")"

# ---------------------------------------------------------------- 2. binary and image
if [[ ${SKIP_CARGO:-0} != 1 ]]; then
  step "cargo build --release --locked --bin coexist"
  cargo build --release --locked --bin coexist
fi
[[ -x target/release/coexist ]] || fail "no target/release/coexist"

# A build context of the files the runtime stages copy, not the repository: target/ holds
# gigabytes that buildah would otherwise walk.
ctx=$(mktemp -d)
ctr=""
coexist_pid=""
cleanup() {
  if [[ -n $coexist_pid ]]; then kill "$coexist_pid" 2>/dev/null || true; fi
  if [[ -n $ctr ]]; then bah rm "$ctr" >/dev/null 2>&1 || true; fi
  rm -rf "$ctx"
}
trap cleanup EXIT
mkdir -p "$ctx/target/release" "$ctx/examples"
cp target/release/coexist "$ctx/target/release/"
cp examples/coexist.toml "$ctx/examples/"

step "buildah bud --target runtime-prebuilt (BASE_IMAGE=$BASE_TAG)"
bah bud --quiet --isolation chroot --pull=never --layers=false \
  --build-arg BASE_IMAGE="$BASE_TAG" \
  --target runtime-prebuilt -f "$repo/Dockerfile" -t "$IMAGE_TAG" "$ctx" >/dev/null
echo "image: $(bah images --noheading --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE_TAG")"
bah inspect --type image --format 'user={{.OCIv1.Config.User}} entrypoint={{.OCIv1.Config.Entrypoint}} cmd={{.OCIv1.Config.Cmd}} ports={{.OCIv1.Config.ExposedPorts}}' "$IMAGE_TAG"

# ---------------------------------------------------------------- 3. run it
ctr=$(bah from --pull=never "$IMAGE_TAG")

step "buildah run: coexist --version"
version=$(bah run --isolation chroot "$ctr" -- /usr/local/bin/coexist --version)
echo "$version"
[[ $version == "coexist $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ]] ||
  fail "unexpected version output: $version"

step "buildah run: the image's command (coexist run, bundled config) as user $(bah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE_TAG")"
if [[ -z ${PORT:-} ]]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
cmd=$(bah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}{{range .OCIv1.Config.Cmd}}{{.}} {{end}}' "$IMAGE_TAG")
log=$CACHE/run.log
# chroot isolation shares the host's network, so the probes below run on the host.
# shellcheck disable=SC2086 # $cmd is the image's ENTRYPOINT + CMD, words without spaces
bah run --isolation chroot \
  --env COEXIST_LISTEN="0.0.0.0:$PORT" --env META_APP_SECRET="$APP_SECRET" \
  --env WAHA_HMAC_KEY="$WAHA_KEY" --env RUST_LOG=info \
  "$ctr" -- $cmd >"$log" 2>&1 &
coexist_pid=$!
url=http://127.0.0.1:$PORT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$url/healthz" 2>/dev/null && break
  kill -0 "$coexist_pid" 2>/dev/null || { cat "$log" >&2; fail "coexist run exited"; }
  sleep 0.1
done

status_of() { curl -sS -o /dev/null -w '%{http_code}' "$@"; }
expect() { # expect CODE WHAT CURL-ARGS...
  local want=$1 what=$2 got
  shift 2
  got=$(status_of "$@")
  printf '%-58s %s\n' "$what" "$got"
  [[ $got == "$want" ]] || { cat "$log" >&2; fail "$what: expected $want, got $got"; }
}
hmac_hex() { openssl dgst "-$1" -hmac "$2" -r "$3" | cut -d' ' -f1; }

# The recorded message with its timestamps set to now (a fresh customer message opens the
# window, so the echo bot's reply is a dry-run send, visible in the log).
body=$ctx/meta.json
now=$(date +%s)
sed "s/\"timestamp\": *\"[0-9]*\"/\"timestamp\": \"$now\"/g" fixtures/meta/text_message.json >"$body"
sig=$(hmac_hex sha256 "$APP_SECRET" "$body")
waha=fixtures/personal/waha_message_text.json
waha_sig=$(hmac_hex sha512 "$WAHA_KEY" "$waha")

expect 200 "GET /healthz" "$url/healthz"
expect 200 "POST /webhooks/meta, X-Hub-Signature-256 of the body" \
  -X POST -H 'Content-Type: application/json' -H "X-Hub-Signature-256: sha256=$sig" \
  --data-binary "@$body" "$url/webhooks/meta"
expect 403 "POST /webhooks/meta, signed with another secret" \
  -X POST -H 'Content-Type: application/json' \
  -H "X-Hub-Signature-256: sha256=$(hmac_hex sha256 wrong-secret "$body")" \
  --data-binary "@$body" "$url/webhooks/meta"
expect 401 "POST /webhooks/meta, no signature" \
  -X POST -H 'Content-Type: application/json' --data-binary "@$body" "$url/webhooks/meta"
expect 200 "POST /webhooks/personal/shop-personal, X-Webhook-Hmac sha512" \
  -X POST -H 'Content-Type: application/json' -H "X-Webhook-Hmac: $waha_sig" \
  -H 'X-Webhook-Hmac-Algorithm: sha512' --data-binary "@$waha" "$url/webhooks/personal/shop-personal"
curl -fsS "$url/metrics" | grep -E '^coexist_(http_requests|signature_failures|events_enqueued)_total' | sed 's/^/  /'

# The worker inside handled both events: the echo bot's replies left as dry runs (no access
# token, no WAHA api_url in the bundled config).
for want in 'would send to the Graph API' 'would call WAHA'; do
  for _ in $(seq 1 100); do
    grep -q "$want" "$log" && break
    sleep 0.1
  done
  grep -q "$want" "$log" || { cat "$log" >&2; fail "no '$want' in the log: the event was not handled"; }
  grep -m1 "$want" "$log" | cut -c1-160 | sed 's/^/  log: /'
done

# docker-compose.yml's health check of serve, run inside the image (no curl there: bash's
# /dev/tcp), with the port of this run.
probe=$(grep -m1 'dev/tcp/127.0.0.1/8080' docker-compose.yml | sed 's/^ *test: //' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)[3])')
probe=${probe//127.0.0.1\/8080/127.0.0.1\/$PORT}
if bah run --isolation chroot "$ctr" -- bash -c "$probe"; then
  printf '%-58s %s\n' "docker-compose.yml health check, inside the image" "healthy"
else
  fail "docker-compose.yml's health check failed inside the image: $probe"
fi

step "SIGTERM: coexist run stops and exits 0"
# buildah run (chroot) runs coexist as its child; signal the process itself.
child=$(pgrep -P "$coexist_pid" -x coexist || pgrep -f "^/usr/local/bin/coexist run --config /etc/coexist/coexist.toml" | head -1 || true)
[[ -n $child ]] || fail "cannot find the coexist process under buildah run ($coexist_pid)"
kill -TERM "$child"
rc=0
wait "$coexist_pid" || rc=$?
coexist_pid=""
echo "exit status $rc"
[[ $rc == 0 ]] || { cat "$log" >&2; fail "coexist run exited $rc on SIGTERM"; }

if [[ ${KEEP_IMAGE:-0} != 1 ]]; then
  bah rm "$ctr" >/dev/null
  ctr=""
  bah rmi "$IMAGE_TAG" >/dev/null
fi
step "image check passed"
