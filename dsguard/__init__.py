"""dsguard: guardrails for Kubernetes DaemonSets."""
