"""The kustomize monitoring component's copies of the chart's monitoring files.

The alert rules and the Grafana dashboard live once, in manifests/helm/dsguard/files/ (Helm's
.Files.Get reads only inside the chart). Kustomize loads files only from under its own root, so
manifests/components/monitoring carries a PrometheusRule wrapped around the same rules and a copy
of the dashboard; tests/unit/test_monitoring_manifests.py fails when they differ. Regenerate with

    .venv/bin/python -m tests.support.monitoring
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "manifests" / "helm" / "dsguard" / "files"
RULES = FILES / "prometheus-rules.yaml"
DASHBOARD = FILES / "grafana-dashboard.json"
COMPONENT = REPO / "manifests" / "components" / "monitoring"

_HEADER = """\
# GENERATED from manifests/helm/dsguard/files/prometheus-rules.yaml by
# `python -m tests.support.monitoring`: edit that file, then regenerate (a unit test compares).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: dsguard
  namespace: dsguard
  labels:
    app.kubernetes.io/name: dsguard
    app.kubernetes.io/part-of: dsguard
    app.kubernetes.io/component: monitoring
spec:
"""


def component_files() -> dict[Path, str]:
    """What the component's generated files must contain."""
    rules = "".join(f"  {line}" if line.strip() else line for line in RULES.read_text().splitlines(True))
    return {
        COMPONENT / "prometheusrule.yaml": _HEADER + rules,
        COMPONENT / "grafana-dashboard.json": DASHBOARD.read_text(),
    }


def main() -> None:
    for path, text in component_files().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
