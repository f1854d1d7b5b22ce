"""Alerts about the guard's actions: Kubernetes Events, Slack, signed JSON webhooks, Alertmanager.

- `alert`: the Alert value and the generic webhook's JSON body (pure: no HTTP, no Kubernetes).
- `sinks`: the HTTP sinks, Secret-backed credentials and `build_sinks` from the policy's alerts.
- `events`: core/v1 Events on the DaemonSet (also the always-on "events" sink).
- `dispatch`: per-sink queues with dedupe, retries with backoff, and AlertDeliveryFailed Events.
- `notifier`: routes an alert to its policy's sinks (a dispatcher per `alerts` list), and tells the
  guard's outbox when an alert has settled.

Deliberately imports nothing: pure modules (guard.rollout) import `guard.notify.alert`, and a
re-export here would drag aiohttp and the Kubernetes client in with it.
"""
