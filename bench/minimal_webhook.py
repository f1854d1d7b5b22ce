"""The framework's floor: an aiohttp HTTPS webhook that parses the AdmissionReview, echoes the uid
and allows. What `dsguard webhook` is compared with (bench/webhook_load.py --baseline,
bench/admission_latency.py's `minimal` set-up): same framework, same TLS, no rules.

    .venv/bin/python bench/minimal_webhook.py --tls-cert-file F --tls-private-key-file F --port P
"""

from __future__ import annotations

import argparse
import ssl

import orjson
from aiohttp import web


async def review(request: web.Request) -> web.Response:
    doc = orjson.loads(await request.read())
    answer = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": doc["request"]["uid"], "allowed": True},
    }
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tls-cert-file", required=True)
    p.add_argument("--tls-private-key-file", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
    app = web.Application(client_max_size=7 * 1024 * 1024)
    app.router.add_post("/mutate", review)
    app.router.add_post("/validate", review)
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", ok)
    web.run_app(app, host=args.host, port=args.port, ssl_context=ctx, access_log=None, print=None)


if __name__ == "__main__":
    main()
