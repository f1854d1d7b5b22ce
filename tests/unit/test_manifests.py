"""Static checks of the install manifests, the chart and the Dockerfile: the names that must agree
across files do, the args are real flags of the commands, every container is hardened, RBAC has no
wildcards. tests/cluster/test_manifests.py has the apiserver judge the same files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from dsguard.cli import main

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "manifests" / "base"
CHART = REPO / "manifests" / "helm" / "dsguard"
CRD = REPO / "manifests" / "crds" / "dsguard.io_daemonsetpolicies.yaml"
NS = "dsguard"

Obj = dict[str, Any]


def base_objects() -> list[Obj]:
    docs: list[Obj] = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = base_objects()


def one(kind: str, name: str) -> Obj:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def deployments() -> Iterator[Obj]:
    return (d for d in DOCS if d["kind"] == "Deployment")


def args_of(deployment: str) -> list[str]:
    return [
        str(a) for a in one("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]["args"]
    ]


def flag(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]


def test_kustomization_lists_every_file() -> None:
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) - {"../crds"} == files
    assert "../crds" in listed


def test_chart_crd_is_the_crd() -> None:
    assert (CHART / "crds" / CRD.name).read_bytes() == CRD.read_bytes(), (
        f"copy {CRD.relative_to(REPO)} to the chart's crds/ (Helm cannot reference files outside the chart)"
    )


def _command(args: list[str]) -> tuple[click.Command, list[str]]:
    cmd: click.Command = main
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        assert sub is not None, f"`dsguard {' '.join(args)}`: no command {rest[0]!r}"
        cmd, rest = sub, rest[1:]
    return cmd, rest


@pytest.mark.parametrize("deployment", ["dsguard-webhook", "dsguard-guard", "dsguard-certs"])
def test_args_are_flags_of_the_command(deployment: str) -> None:
    cmd, rest = _command(args_of(deployment))
    known = {opt for p in cmd.params for opt in p.opts}
    for arg in rest:
        assert arg.startswith("--") and "=" in arg, f"{deployment}: write flags as --name=value: {arg}"
        assert arg.split("=", 1)[0] in known, f"{deployment}: `dsguard ... {arg}`: no such option"


def test_names_agree_across_objects() -> None:
    webhook = args_of("dsguard-webhook")
    certs = args_of("dsguard-certs")
    guard = args_of("dsguard-guard")
    pod = one("Deployment", "dsguard-webhook")["spec"]["template"]["spec"]
    (tls_volume,) = [v for v in pod["volumes"] if "secret" in v]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == tls_volume["name"]]
    # The webhook reads the Secret the certs loop writes, where it is mounted.
    assert flag(certs, "--secret") == [tls_volume["secret"]["secretName"]]
    assert flag(webhook, "--tls-cert-file") == [f"{mount['mountPath']}/tls.crt"]
    assert flag(webhook, "--tls-private-key-file") == [f"{mount['mountPath']}/tls.key"]
    # The certificate names the Service the webhook configurations call, in the right namespace.
    assert flag(certs, "--service") == [one("Service", "dsguard-webhook")["metadata"]["name"]]
    assert flag(certs, "--namespace") == [NS]
    configs = {d["metadata"]["name"]: d for d in DOCS if d["kind"].endswith("WebhookConfiguration")}
    assert sorted(flag(certs, "--webhook-configuration")) == sorted(
        f"{'mutating' if d['kind'].startswith('Mutating') else 'validating'}/{n}" for n, d in configs.items()
    )
    for config in configs.values():
        for hook in config["webhooks"]:
            assert hook["clientConfig"]["service"]["name"] == "dsguard-webhook"
            assert hook["clientConfig"]["service"]["namespace"] == NS
            port = hook["clientConfig"]["service"]["port"]
            assert port in [p["port"] for p in one("Service", "dsguard-webhook")["spec"]["ports"]]
    # RBAC names what the commands touch.
    certs_role = one("Role", "dsguard-certs")["rules"]
    assert {*flag(certs, "--secret"), *flag(certs, "--ca-secret")} == set(certs_role[0]["resourceNames"])
    certs_cluster_role = one("ClusterRole", "dsguard-certs")["rules"]
    assert sorted(n for r in certs_cluster_role for n in r["resourceNames"]) == sorted(configs)
    guard_role = one("Role", "dsguard-guard")
    assert flag(guard, "--lease-namespace") == [guard_role["metadata"]["namespace"]] == [NS]
    assert flag(guard, "--lease-name") == guard_role["rules"][0]["resourceNames"]
    # The guard's own changes pass the webhook.
    guard_sa = one("Deployment", "dsguard-guard")["spec"]["template"]["spec"]["serviceAccountName"]
    assert flag(webhook, "--exempt-user") == [f"system:serviceaccount:{NS}:{guard_sa}"]
    # Every binding binds its own component's ServiceAccount, and every pod runs as it.
    for d in DOCS:
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert d["subjects"] == [
                {"kind": "ServiceAccount", "name": d["metadata"]["name"], "namespace": NS}
            ]
            assert d["roleRef"]["name"] == d["metadata"]["name"]
    for d in deployments():
        assert d["spec"]["template"]["spec"]["serviceAccountName"] == d["metadata"]["name"]


def test_webhook_configurations() -> None:
    for config in (d for d in DOCS if d["kind"].endswith("WebhookConfiguration")):
        (hook,) = config["webhooks"]
        assert hook["rules"] == [
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "resources": ["daemonsets"],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ]
        assert hook["sideEffects"] == "None" and hook["matchPolicy"] == "Equivalent"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["timeoutSeconds"] <= 5
        assert hook["failurePolicy"] == "Ignore"  # the documented default: docs/install.md
        assert "caBundle" not in hook["clientConfig"], (
            "written by dsguard certs run or cert-manager, not here"
        )
        expressions = hook["namespaceSelector"]["matchExpressions"]
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NS]} in expressions
        assert "objectSelector" not in hook
        if config["kind"] == "MutatingWebhookConfiguration":
            assert hook["reinvocationPolicy"] == "IfNeeded"


@pytest.mark.parametrize("deployment", ["dsguard-webhook", "dsguard-guard", "dsguard-certs"])
def test_pods_are_hardened(deployment: str) -> None:
    pod = one("Deployment", deployment)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, (c["name"], kind)
        assert (
            c["image"]
            == one("Deployment", "dsguard-webhook")["spec"]["template"]["spec"]["containers"][0]["image"]
        )


def test_replicas_and_disruption_budgets() -> None:
    webhook = one("Deployment", "dsguard-webhook")["spec"]
    assert webhook["replicas"] == 2
    assert webhook["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = webhook["template"]["spec"]["topologySpreadConstraints"]
    assert any(
        s["topologyKey"] == "kubernetes.io/hostname" and s["whenUnsatisfiable"] == "DoNotSchedule"
        for s in spread
    )
    c = webhook["template"]["spec"]["containers"][0]
    assert (
        c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )
    assert one("PodDisruptionBudget", "dsguard-webhook")["spec"]["minAvailable"] == 1
    assert one("Deployment", "dsguard-guard")["spec"]["replicas"] == 2
    assert one("Deployment", "dsguard-certs")["spec"]["replicas"] == 1
    assert one("Deployment", "dsguard-certs")["spec"]["strategy"] == {"type": "Recreate"}


def test_rbac_is_narrow() -> None:
    for d in DOCS:
        if d["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in d["rules"]:
            if "nonResourceURLs" in rule:  # the guard's read of the apiserver's /metrics, nothing else
                assert rule == {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, rule
                continue
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (d["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
            if "delete" in rule["verbs"]:  # wave rollouts' old pods and the guard's own policy reports
                assert rule in (
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
                    {"apiGroups": ["openreports.io"], "resources": ["reports"],
                     "verbs": ["list", "create", "patch", "delete"]},
                ), rule  # fmt: skip
            if "secrets" in rule["resources"]:
                assert d["kind"] == "Role", "Secrets only in the dsguard namespace"
                assert rule.get("resourceNames") or rule["verbs"] == ["create"], rule
                assert not {"list", "watch"} & set(rule["verbs"])


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def dockerfile_uid() -> int:
    (user,) = [ln for ln in dockerfile_stages()[-1] if ln.startswith("USER ")]
    m = re.fullmatch(r"USER (\d+):(\d+)", user)
    assert m, "USER as numeric uid:gid, so runAsNonRoot can verify it"
    return int(m.group(1))


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    final = "\n".join(dockerfile_stages()[-1])
    assert dockerfile_uid() != 0
    assert 'ENTRYPOINT ["dsguard"]' in final
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final, f"the final stage must not {tool!r}"
    assert "COPY --from=build /opt/dsguard /opt/dsguard" in final


def test_dockerignore_lets_the_build_context_in() -> None:
    allowed = {
        ln[1:].rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.startswith("!")
    }
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
