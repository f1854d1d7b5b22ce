"""The webhook's TLS: issue certificates (issue), CA bundles and caBundle injection (bundle), the
certificate lifecycle as a pure plan (rotate), its Kubernetes I/O and loop (bootstrap), and the
serving context that reloads new files in place (tls). docs/certificates.md has the design."""
