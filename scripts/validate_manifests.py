"""Validates coexist's Kubernetes manifests and checks them against the config and compose file.

Run by scripts/validate-manifests.sh inside its venv (kubernetes-validate, jsonschema, PyYAML):

    python scripts/validate_manifests.py [--root DIR] [--kubernetes-version V ...]

- Every document of deploy/kubernetes/*.yaml and deploy/kubernetes-secret.example.yaml:
  built-in kinds against the Kubernetes OpenAPI schemas that kubernetes-validate ships
  (strict: unknown fields are errors), KEDA kinds against scripts/schemas/keda-v1alpha1.schema.json.
  A kind with no schema is an error, not a warning.
- Consistency: the ConfigMap carries deploy/coexist.toml verbatim; the ScaledObject has one
  trigger per partition stream of the config's channels, in the group `workers`; probes and
  ports match the config's listen addresses; every secret the config names is in the Secret
  template and in the compose services' environment; WAHA's hook URL is a Personal channel's
  route and its HMAC key the channel's webhook secret.

Exits 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

GROUP = "workers"  # src/keys.rs: the consumer group of every partition stream
VAR = re.compile(r"\$\{([A-Za-z0-9_]+)(:?[-?][^}]*)?\}")


def strings(value):
    """Every string in a parsed TOML/YAML value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


class Checker:
    def __init__(self, root: Path, versions: list[str]):
        self.root = root
        self.versions = versions
        self.errors: list[str] = []
        self.checked = 0

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # ------------------------------------------------------------------ schemas

    def load_docs(self, path: Path) -> list[dict]:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            self.error(str(path), f"not YAML: {e}")
            return []
        for d in docs:
            if not isinstance(d, dict):
                self.error(str(path), "a document is not a mapping")
        return [d for d in docs if isinstance(d, dict)]

    def validate_schema(self, path: Path, doc: dict, keda: jsonschema.protocols.Validator) -> None:
        kind = doc.get("kind")
        name = (doc.get("metadata") or {}).get("name")
        where = f"{path.relative_to(self.root)} {kind}/{name}"
        self.checked += 1
        if str(doc.get("apiVersion", "")).startswith("keda.sh/"):
            for e in sorted(keda.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                at = "/".join(str(p) for p in e.absolute_path) or "(root)"
                self.error(where, f"KEDA schema: {at}: {e.message}")
            return
        for version in self.versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except ValidationError as e:
                at = "/".join(str(p) for p in e.path) or "(root)"
                self.error(where, f"Kubernetes {version} schema: {at}: {e.message}")
            except SchemaNotFoundError:
                self.error(where, f"no schema for {doc.get('apiVersion')} {kind} in Kubernetes {version}")

    # ------------------------------------------------------------------ consistency

    def consistency(self, docs: dict[str, list[dict]]) -> None:
        config_path = self.root / "deploy/coexist.toml"
        config_text = config_path.read_text()
        config = tomllib.loads(config_text)
        prefix = config.get("redis", {}).get("prefix", "cx")
        channels = config.get("channels", [])
        # The variables the config's values name without a default (comments do not count).
        secret_vars = sorted({m.group(1) for v in strings(config) for m in VAR.finditer(v) if not m.group(2)})

        by_kind: dict[str, list[tuple[str, dict]]] = {}
        for file, ds in docs.items():
            for d in ds:
                by_kind.setdefault(d.get("kind", ""), []).append((file, d))

        # The ConfigMap is the config file.
        maps = {d["metadata"]["name"]: (f, d) for f, d in by_kind.get("ConfigMap", [])}
        if "coexist-config" not in maps:
            self.error("deploy/kubernetes", "no ConfigMap coexist-config")
        else:
            f, d = maps["coexist-config"]
            if (d.get("data") or {}).get("coexist.toml") != config_text:
                self.error(f, "ConfigMap coexist-config's coexist.toml differs from deploy/coexist.toml")

        # The Secret template names every variable the config needs, with placeholders only.
        secrets = {d["metadata"]["name"]: (f, d) for f, d in by_kind.get("Secret", [])}
        if "coexist-secrets" not in secrets:
            self.error("deploy", "no Secret template coexist-secrets")
        else:
            f, d = secrets["coexist-secrets"]
            data = d.get("stringData") or {}
            for var in secret_vars:
                if var not in data:
                    self.error(f, f"the config needs ${{{var}}} but the Secret has no key {var}")
            for key, value in data.items():
                if value and not re.search(r"<[^>]+>", str(value)):
                    self.error(f, f"{key} holds a value, not a <placeholder>: a template only")

        # Deployments: config and secrets wired, ports and probes on the config's addresses.
        listen_port = int(config["server"]["listen"].rsplit(":", 1)[1])
        metrics = config.get("worker", {}).get("metrics_listen")
        metrics_port = int(metrics.rsplit(":", 1)[1]) if metrics else None
        deployments = {}
        for f, d in by_kind.get("Deployment", []):
            deployments[d["metadata"]["name"]] = d
            spec = d["spec"]["template"]["spec"]
            c = spec["containers"][0]
            role = c.get("args", [None])[0]
            where = f"{f} Deployment/{d['metadata']['name']}"
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            vol = vols.get(mounts.get("/etc/coexist", ""), {})
            if (vol.get("configMap") or {}).get("name") not in maps:
                self.error(where, "does not mount the ConfigMap coexist-config at /etc/coexist")
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            if "coexist-secrets" not in refs:
                self.error(where, "does not take its environment from the Secret coexist-secrets")
            if c.get("args", [])[1:] != ["--config", "/etc/coexist/coexist.toml"]:
                self.error(where, f"args {c.get('args')} do not name /etc/coexist/coexist.toml")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            want = {"serve": listen_port, "work": metrics_port}.get(role)
            if role not in ("serve", "work"):
                self.error(where, f"unexpected command {role!r}")
                continue
            if want is None:
                self.error(where, "a worker needs [worker] metrics_listen for its probes")
                continue
            for probe in ("livenessProbe", "readinessProbe"):
                get = (c.get(probe) or {}).get("httpGet")
                if not get:
                    self.error(where, f"no {probe} over HTTP")
                    continue
                port = ports.get(get["port"], get["port"])
                if port != want:
                    self.error(where, f"{probe} on port {port}, but {role} listens on {want}")
                if get["path"] not in ("/healthz", "/readyz") or (role == "work" and get["path"] != "/healthz"):
                    self.error(where, f"{probe} path {get['path']} is not served by `coexist {role}`")

        # KEDA: one trigger per partition stream, the consumer group of the workers.
        want_streams = {f"{prefix}:{{{c['id']}}}:in:{p}" for c in channels for p in range(c.get("partitions", 1))}
        total = sum(c.get("partitions", 1) for c in channels)
        for f, d in by_kind.get("ScaledObject", []):
            where = f"{f} ScaledObject/{d['metadata']['name']}"
            spec = d["spec"]
            target = deployments.get(spec["scaleTargetRef"]["name"])
            if target is None or target["spec"]["template"]["spec"]["containers"][0].get("args", [None])[0] != "work":
                self.error(where, "scaleTargetRef is not the Deployment that runs `coexist work`")
            streams = set()
            for t in spec.get("triggers", []):
                md = t.get("metadata", {})
                if t.get("type") in ("redis-streams", "redis-cluster-streams"):
                    streams.add(md.get("stream"))
                    if md.get("consumerGroup", GROUP) != GROUP:
                        self.error(where, f"trigger {t.get('name')}: consumerGroup {md.get('consumerGroup')!r}, the workers' is {GROUP!r}")
                    auth = (t.get("authenticationRef") or {}).get("name")
                    if auth and auth not in {x["metadata"]["name"] for _, x in by_kind.get("TriggerAuthentication", [])}:
                        self.error(where, f"trigger {t.get('name')}: no TriggerAuthentication {auth}")
            if streams != want_streams:
                missing = sorted(want_streams - streams)
                extra = sorted(streams - want_streams)
                self.error(where, f"streams of the triggers differ from the config's partitions: missing {missing}, unknown {extra}")
            if spec.get("maxReplicaCount", 100) > total:
                self.error(where, f"maxReplicaCount {spec.get('maxReplicaCount')} > {total} partitions: the extra workers would hold no lease")

        self.compose(config, secret_vars)

    def compose(self, config: dict, secret_vars: list[str]) -> None:
        path = self.root / "docker-compose.yml"
        where = "docker-compose.yml"
        compose = yaml.safe_load(path.read_text())
        services = compose.get("services", {})
        for name in ("serve", "work"):
            svc = services.get(name)
            if svc is None:
                self.error(where, f"no service {name}")
                continue
            env = svc.get("environment") or {}
            for var in secret_vars:
                if var not in env:
                    self.error(where, f"service {name}: the config needs ${{{var}}} but the environment has no {var}")
            for var, value in env.items():
                if var in secret_vars and var != "REDIS_URL" and not str(value).startswith("${"):
                    self.error(where, f"service {name}: {var} is written in the file; take it from the environment (${{{var}}})")
        personal = {c["id"]: c for c in config.get("channels", []) if c.get("kind") == "personal"}
        waha = services.get("waha")
        if waha is None:
            self.error(where, "no waha service")
            return
        env = waha.get("environment") or {}
        m = re.fullmatch(r"http://serve:(\d+)/webhooks/personal/([^/]+)", str(env.get("WHATSAPP_HOOK_URL", "")))
        if not m or m.group(2) not in personal:
            self.error(where, f"waha: WHATSAPP_HOOK_URL {env.get('WHATSAPP_HOOK_URL')!r} is not a Personal channel's route on serve ({sorted(personal)})")
            return
        if int(m.group(1)) != int(config["server"]["listen"].rsplit(":", 1)[1]):
            self.error(where, "waha: WHATSAPP_HOOK_URL's port is not serve's")
        key_var = VAR.search(str(env.get("WHATSAPP_HOOK_HMAC_KEY", "")))
        secrets = " ".join(personal[m.group(2)].get("webhook_secrets", []))
        if not key_var or f"${{{key_var.group(1)}}}" not in secrets:
            self.error(where, f"waha: WHATSAPP_HOOK_HMAC_KEY is not the webhook secret of channel {m.group(2)} ({secrets})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--kubernetes-version", action="append", dest="versions")
    args = ap.parse_args()
    root = args.root.resolve()
    checker = Checker(root, args.versions or ["1.29.0", "1.37.0"])
    schema = json.loads((root / "scripts/schemas/keda-v1alpha1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    keda = jsonschema.Draft202012Validator(schema)

    files = sorted((root / "deploy/kubernetes").glob("*.yaml")) + [root / "deploy/kubernetes-secret.example.yaml"]
    docs = {}
    for path in files:
        ds = checker.load_docs(path)
        docs[str(path.relative_to(root))] = ds
        for d in ds:
            checker.validate_schema(path, d, keda)
    checker.consistency(docs)

    for e in checker.errors:
        print(f"ERROR {e}")
    kinds = sorted({d.get("kind") for ds in docs.values() for d in ds})
    print(f"kubernetes manifests: {checker.checked} documents in {len(files)} files ({', '.join(kinds)}), "
          f"Kubernetes {', '.join(checker.versions)}: {len(checker.errors)} problems")
    return 1 if checker.errors else 0


if __name__ == "__main__":
    sys.exit(main())
