"""Structural checks of deploy/ that no off-the-shelf linter does (run by .ci/ops-checks).

- every file a kustomization.yaml names exists; the Secret example stays out of every base;
- the PrometheusRule has groups, rules, expr, for, labels.severity and the annotations
  on-call needs, every expression has balanced brackets, and every runbook_url is
  docs/operations.md#<alert>, a heading that exists; its spec is written to WORK/rules.yaml
  (for `promtool check rules`) and, without annotations, to WORK/rules-tested.yaml (for
  `promtool test rules`);
- the dashboard's panels all have ids, titles and queries over inboxd_ metrics;
- the Deployment agrees with the config in the ConfigMap (every secret is a file: reference
  into the mounted Secret, whose example has that key with an empty value; the grace period
  exceeds server.shutdown_grace; the store is on the data volume), asks for the measured
  memory and ephemeral storage, and names the placeholder registry; the PVC is
  ReadWriteOncePod; the NetworkPolicy and the PodMonitor select its pods; the ConfigMap's
  config is written to WORK/inboxd.toml (secret files under WORK/secrets) for
  `inboxd check-config`;
- the Dockerfile's base images are ARGs with a tag and, if any, a well-formed digest;
- compose.yaml's inboxd shares the emulator's network namespace and its files exist.

Usage: python ops_checks.py WORK_DIR   (from the repository root; prints every problem).
"""

import json
import os
import re
import sys
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path("deploy")
# Every alert's runbook_url is this file plus the anchor of a heading named like the alert.
RUNBOOK = "docs/operations.md"
problems: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def load_one(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(docs) != 1:
        problem(str(path), f"expected one YAML document, found {len(docs)}")
        return {}
    return docs[0]


def balanced(expr: str) -> str | None:
    """None when (), [] and {} nest properly outside string literals; else what is wrong."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote = None
    escaped = False
    for ch in expr:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return f"unbalanced '{ch}'"
    if quote:
        return "unterminated string"
    if stack:
        return f"unclosed '{stack[-1]}'"
    return None


def anchors(path: Path) -> set[str]:
    """The GitHub-style anchors of a Markdown file's headings (lower case, spaces to '-')."""
    if not path.exists():
        problem(str(path), "is missing")
        return set()
    found = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#+\s+(.*)", line)):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def check_kustomizations() -> None:
    for kfile in sorted(DEPLOY.rglob("kustomization.yaml")):
        k = load_one(kfile)
        base = kfile.parent
        listed = list(k.get("resources", []))
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            listed += [f.split("=", 1)[-1] for f in gen.get("files", [])]
        listed += [p["path"] for p in k.get("patches", []) if "path" in p]
        if not listed:
            problem(str(kfile), "lists no resources")
        for name in listed:
            if not (base / name).exists():
                problem(str(kfile), f"lists {name}, which does not exist")
        if any("secret.example" in n or n.startswith("examples") for n in listed):
            problem(str(kfile), "must not include the Secret example (placeholder values)")


def check_rules(work: Path) -> None:
    path = DEPLOY / "monitoring" / "prometheusrule.yaml"
    rule = load_one(path)
    if rule.get("apiVersion") != "monitoring.coreos.com/v1" or rule.get("kind") != "PrometheusRule":
        problem(str(path), "must be apiVersion monitoring.coreos.com/v1, kind PrometheusRule")
    if not rule.get("metadata", {}).get("name"):
        problem(str(path), "metadata.name is missing")
    groups = rule.get("spec", {}).get("groups")
    if not isinstance(groups, list) or not groups:
        problem(str(path), "spec.groups must be a non-empty list")
        return
    runbook_anchors = anchors(Path(RUNBOOK))
    names: set[str] = set()
    for g, group in enumerate(groups):
        where = f"{path} spec.groups[{g}]"
        if not group.get("name"):
            problem(where, "has no name")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problem(where, "rules must be a non-empty list")
            continue
        for r, item in enumerate(rules):
            at = f"{where}.rules[{r}] ({item.get('alert', '?')})"
            alert = item.get("alert")
            if not alert or not re.fullmatch(r"Inboxd[A-Za-z]+", alert):
                problem(at, "alert must be named Inboxd<CamelCase>")
            elif alert in names:
                problem(at, "duplicate alert name")
            names.add(alert or "")
            expr = item.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problem(at, "expr is missing")
            else:
                if why := balanced(expr):
                    problem(at, f"expr: {why}")
                if "inboxd_" not in expr:
                    problem(at, "expr uses no inboxd_ metric")
            if not re.fullmatch(r"\d+[smh]", str(item.get("for", ""))):
                problem(at, "for must be a duration such as 5m")
            if item.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problem(at, "labels.severity must be critical, warning or info")
            ann = item.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not ann.get(key):
                    problem(at, f"annotations.{key} is missing")
            anchor = (alert or "").lower()
            if ann.get("runbook_url") and ann["runbook_url"] != f"{RUNBOOK}#{anchor}":
                problem(at, f"runbook_url must be {RUNBOOK}#{anchor}")
            elif anchor not in runbook_anchors:
                problem(at, f"{RUNBOOK} has no heading '{alert}'")
    (work / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tested = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]} for g in groups
    ]
    (work / "rules-tested.yaml").write_text(yaml.safe_dump({"groups": tested}, sort_keys=False))
    print(f"  {len(names)} alerts in {len(groups)} groups")


def check_dashboard() -> None:
    path = DEPLOY / "monitoring" / "grafana-dashboard.json"
    board = json.loads(path.read_text())
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in board:
            problem(str(path), f"{key} is missing")
    ids: set[int] = set()
    queries = 0
    for panel in board.get("panels", []):
        at = f"{path} panel {panel.get('id')} ({panel.get('title', '?')})"
        if panel.get("id") in ids:
            problem(at, "duplicate panel id")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        if not panel.get("title") or "gridPos" not in panel:
            problem(at, "needs a title and a gridPos")
        targets = panel.get("targets") or []
        if not targets:
            problem(at, "has no query")
        for t in targets:
            expr = t.get("expr", "")
            queries += 1
            if "inboxd_" not in expr:
                problem(at, f"query {expr!r} uses no inboxd_ metric")
            if why := balanced(expr):
                problem(at, f"query {expr!r}: {why}")
    print(f"  dashboard: {len(ids)} panels, {queries} queries")


def find(docs: list[dict], kind: str) -> dict:
    return next((d for d in docs if d.get("kind") == kind), {})


SECRET_EXAMPLE = DEPLOY / "examples" / "secret.example.yaml"
SECRET_MOUNT = "/run/secrets/inboxd"


def check_deployment(work: Path) -> None:
    docs = [load_one(p) for p in sorted(DEPLOY.glob("*.yaml")) if p.name not in ("kustomization.yaml", "compose.yaml")]
    deployment, configmap = find(docs, "Deployment"), find(docs, "ConfigMap")
    if find(docs, "Secret"):
        problem("deploy/", "no Secret may sit where `kubectl apply -f deploy/` reads (move it to deploy/examples/)")
    secret = load_one(SECRET_EXAMPLE)
    spec = deployment.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    container = (pod.get("containers") or [{}])[0]
    where = "deploy/deployment.yaml"
    if spec.get("replicas") != 1 or spec.get("strategy", {}).get("type") != "Recreate":
        problem(where, "SQLite needs replicas: 1 and strategy: Recreate")
    toml_text = configmap.get("data", {}).get("inboxd.toml", "")
    try:
        config = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        problem("deploy/configmap.yaml", f"inboxd.toml: {e}")
        return
    grace = config.get("server", {}).get("shutdown_grace", "20s")
    m = re.fullmatch(r"(\d+)s", grace)
    if not m:
        problem("deploy/configmap.yaml", f"write server.shutdown_grace in seconds, not {grace!r}")
    elif pod.get("terminationGracePeriodSeconds", 30) <= int(m.group(1)):
        problem(where, f"terminationGracePeriodSeconds must exceed server.shutdown_grace ({grace})")
    if not config.get("store", {}).get("url", "").startswith("sqlite:///var/lib/inboxd/"):
        problem("deploy/configmap.yaml", "store.url must be on the data volume (sqlite:///var/lib/inboxd/...)")
    for app in config.get("apps", []):
        if "client_secret" in app and "secret_expires_at" not in app:
            problem("deploy/configmap.yaml", f"app {app.get('name')}: set secret_expires_at (the expiry alert needs it)")
    # Secrets: file references into the mounted Secret, so a rotation reloads without a restart.
    if re.search(r'"env:', toml_text):
        problem("deploy/configmap.yaml", f"refer to secrets as file:{SECRET_MOUNT}/KEY, not env: (env needs a restart)")
    refs = set(re.findall(rf'"file:{re.escape(SECRET_MOUNT)}/([A-Za-z0-9_.-]+)"', toml_text))
    if not refs:
        problem("deploy/configmap.yaml", f"no secret is read from {SECRET_MOUNT}")
    secret_values = {**secret.get("data", {}), **secret.get("stringData", {})}
    for key in sorted(refs - set(secret_values)):
        problem(str(SECRET_EXAMPLE), f"has no key {key} (read by the config)")
    for key, value in secret_values.items():
        if value not in ("", None):
            problem(str(SECRET_EXAMPLE), f"{key} must be empty (a known value would be a known credential)")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    secret_mount = mounts.get(SECRET_MOUNT, {})
    secret_volume = volumes.get(secret_mount.get("name"), {}).get("secret", {})
    if secret_volume.get("secretName") != secret.get("metadata", {}).get("name") or not secret_mount.get("readOnly"):
        problem(where, f"mount the Secret {secret.get('metadata', {}).get('name')} read-only at {SECRET_MOUNT}")
    if "subPath" in secret_mount or "items" in secret_volume:
        problem(where, "mount the whole Secret (no subPath, no items): a rotation must reach the pod")
    # For `inboxd check-config`: the config with the secret files in WORK, each a placeholder.
    (work / "secrets").mkdir(exist_ok=True)
    for key in refs:
        (work / "secrets" / key).write_text(f"placeholder-{key.lower()}\n")
    (work / "inboxd.toml").write_text(toml_text.replace(f"file:{SECRET_MOUNT}/", f"file:{(work / 'secrets').resolve()}/"))
    (work / "env").write_text("")
    if not mounts.get("/etc/inboxd", {}).get("readOnly"):
        problem(where, "/etc/inboxd must be mounted read-only")
    if "/var/lib/inboxd" not in mounts:
        problem(where, "the data volume must be mounted at /var/lib/inboxd")
    probes = {k: container.get(k, {}).get("httpGet", {}).get("path") for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    if probes != {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}:
        problem(where, f"probes must be startup+readiness on /readyz, liveness on /livez: {probes}")
    sc = container.get("securityContext", {})
    expected = {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for key, value in expected.items():
        if sc.get(key) != value:
            problem(where, f"container securityContext.{key} must be {value}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problem(where, "container securityContext must drop ALL capabilities")
    if "RuntimeDefault" not in (sc.get("seccompProfile", {}).get("type"), pod.get("securityContext", {}).get("seccompProfile", {}).get("type")):
        problem(where, "seccompProfile must be RuntimeDefault")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for res in ("memory", "ephemeral-storage"):
            if res not in resources.get(kind, {}):
                problem(where, f"resources.{kind}.{res} is required")
    if mebibytes(resources.get("requests", {}).get("memory", "0")) < 600:
        problem(where, "resources.requests.memory must cover the measured backlog peak (about 600Mi)")
    image = container.get("image", "")
    if not image.startswith("registry.example.invalid/"):
        problem(where, f"image must name the placeholder registry registry.example.invalid/, not {image!r}")
    pvc = find(docs, "PersistentVolumeClaim")
    if pvc.get("spec", {}).get("accessModes") != ["ReadWriteOncePod"]:
        problem("deploy/pvc.yaml", "accessModes must be [ReadWriteOncePod]: one writer in the cluster")
    check_network_policy(find(docs, "NetworkPolicy"), deployment)
    check_pod_monitor(deployment, container)


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (Ki, Mi, Gi or plain bytes) in MiB."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(quantity))
    if not m:
        return 0
    return int(m.group(1)) * units.get(m.group(2), 1 / 1048576)


def check_network_policy(policy: dict, deployment: dict) -> None:
    where = "deploy/networkpolicy.yaml"
    if not policy:
        problem("deploy/", "a NetworkPolicy is required")
        return
    spec = policy.get("spec", {})
    labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    selector = spec.get("podSelector", {}).get("matchLabels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problem(where, "podSelector must select the Deployment's pods")
    if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
        problem(where, "policyTypes must be Ingress and Egress")
    ingress_ports = {p.get("port") for rule in spec.get("ingress", []) for p in rule.get("ports", [])}
    if ingress_ports != {8080}:
        problem(where, f"ingress must allow port 8080 only, not {sorted(ingress_ports)}")
    egress_ports = {(p.get("port"), p.get("protocol", "TCP")) for rule in spec.get("egress", []) for p in rule.get("ports", [])}
    for needed in ((53, "UDP"), (53, "TCP"), (443, "TCP")):
        if needed not in egress_ports:
            problem(where, f"egress must allow {needed[1]} {needed[0]}")


def check_pod_monitor(deployment: dict, container: dict) -> None:
    path = DEPLOY / "monitoring" / "podmonitor.yaml"
    monitor = load_one(path)
    rule = load_one(DEPLOY / "monitoring" / "prometheusrule.yaml")
    if monitor.get("kind") != "PodMonitor" or monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problem(str(path), "must be a monitoring.coreos.com/v1 PodMonitor")
        return
    release = monitor.get("metadata", {}).get("labels", {}).get("release")
    if not release or release != rule.get("metadata", {}).get("labels", {}).get("release"):
        problem(str(path), "its release label must match the PrometheusRule's (same Prometheus selects both)")
    labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    selector = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problem(str(path), "selector must match the Deployment's pod labels")
    ports = {p.get("name") for p in container.get("ports", [])}
    for endpoint in monitor.get("spec", {}).get("podMetricsEndpoints", []):
        if endpoint.get("port") not in ports or endpoint.get("path") != "/metrics":
            problem(str(path), f"endpoint {endpoint} must scrape a container port by name, path /metrics")
    annotations = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/path") != "/metrics":
        problem("deploy/deployment.yaml", "keep the prometheus.io/* annotations for plain Prometheus")


def check_base_images() -> None:
    """FROM lines name ARGs whose defaults are IMAGE:TAG, optionally @sha256:<64 hex>."""
    text = Path("Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    unpinned = []
    for ref in froms:
        m = re.fullmatch(r"\$\{(\w+)\}", ref)
        if not m or m.group(1) not in defaults:
            problem("Dockerfile", f"FROM {ref}: name a base image through an ARG ..._IMAGE with a default")
            continue
        image = defaults[m.group(1)]
        name, _, digest = image.partition("@")
        if ":" not in name.rsplit("/", 1)[-1]:
            problem("Dockerfile", f"{m.group(1)}={image}: give the tag too")
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            problem("Dockerfile", f"{m.group(1)}={image}: the digest must be sha256:<64 hex digits>")
        if not digest:
            unpinned.append(m.group(1))
    if unpinned:
        print(f"  base images not pinned by digest yet: {', '.join(unpinned)} (see the Dockerfile)")
        if os.environ.get("INBOXD_REQUIRE_PINNED") == "1":
            problem("Dockerfile", f"INBOXD_REQUIRE_PINNED=1 and {', '.join(unpinned)} carry no digest")


def check_compose() -> None:
    path = DEPLOY / "compose.yaml"
    compose = load_one(path)
    services = compose.get("services", {})
    if set(services) != {"emulator", "inboxd"}:
        problem(str(path), f"expected services emulator and inboxd, found {sorted(services)}")
        return
    if services["inboxd"].get("network_mode") != "service:emulator":
        problem(str(path), "inboxd must share the emulator's network (http:// only on loopback)")
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")) and not (DEPLOY / source).exists():
                problem(str(path), f"{name} mounts {source}, which does not exist")


def main() -> int:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    check_kustomizations()
    check_rules(work)
    check_dashboard()
    check_deployment(work)
    check_base_images()
    check_compose()
    for p in problems:
        print(f"  problem: {p}", file=sys.stderr)
    if problems:
        print(f"ops_checks.py: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("  kustomizations, PrometheusRule, dashboard, Deployment/ConfigMap/Secret, compose: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
