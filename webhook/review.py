"""AdmissionReview admission.k8s.io/v1: decode a request, encode a response.

Wire format only (staging/src/k8s.io/api/admission/v1/types.go). A review that can't be read
raises BadReview, which the server answers with HTTP 400; a policy rejection is a normal
response with allowed: false.

The boundary: a body nested deeper than daemonset_shape.MAX_DEPTH is refused before anything
recursive touches it, and a DaemonSet's object and oldObject are shape-checked here once
(`object_errors`), so the rules never read a field of the wrong type or an unparseable value.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from dsguard.daemonset_shape import MAX_DEPTH, ShapeError, daemonset_shape_errors, describe, too_deep

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
_OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")


class BadReview(ValueError):
    """The request body is not a usable AdmissionReview; the message says what is wrong."""


class StatusPayload(TypedDict, total=False):
    code: int
    message: str
    reason: str


class ResponsePayload(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[StatusPayload]
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]
    warnings: NotRequired[list[str]]


class ReviewPayload(TypedDict):
    apiVersion: str
    kind: str
    response: ResponsePayload


@dataclass(frozen=True)
class GroupVersionKind:
    group: str
    version: str
    kind: str


@dataclass(frozen=True)
class AdmissionRequest:
    uid: str
    kind: GroupVersionKind
    resource: str
    sub_resource: str
    operation: Operation
    namespace: str
    name: str
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    dry_run: bool
    username: str
    # daemonset_shape_errors of object and oldObject (DaemonSet CREATE/UPDATE only).
    object_errors: tuple[ShapeError, ...] = ()
    old_object_errors: tuple[ShapeError, ...] = ()

    @property
    def is_daemonset(self) -> bool:
        return self.kind.group == "apps" and self.kind.kind == "DaemonSet" and not self.sub_resource

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _field(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, Mapping):
        what = "missing" if value is None else f"{describe(value)}, not an object"
        raise BadReview(f"{path}{key} is {what}")
    return value


def _shown(value: object) -> str:
    """A value for an error message: a short string quoted, anything else described (bounded)."""
    return repr(value) if isinstance(value, str) and len(value) <= 80 else describe(value)


def _text(value: object) -> str:
    """A string field; anything else (the apiserver always sends strings here) reads as ""."""
    return value if isinstance(value, str) else ""


def decode(body: bytes) -> AdmissionRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadReview(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadReview(f"body must be a JSON object ({KIND}), got {type(doc).__name__}")
    # Nesting needs brackets: a body with fewer than the limit can't exceed it (memchr-fast).
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and too_deep(doc):
        raise BadReview(
            f"objects and arrays nest more than {MAX_DEPTH} levels deep; an AdmissionReview of a "
            "DaemonSet has a few dozen at most"
        )
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        got = f"apiVersion {_shown(doc.get('apiVersion'))} kind {_shown(doc.get('kind'))}"
        raise BadReview(
            f"expected apiVersion {API_VERSION} kind {KIND}, got {got}; "
            "set admissionReviewVersions: [v1] in the webhook configuration"
        )
    req = _field(doc, "request", "")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid is missing; the response must echo it")
    op = req.get("operation")
    if op not in _OPERATIONS:
        raise BadReview(f"request.operation {_shown(op)} is not one of {', '.join(_OPERATIONS)}")
    kind = _field(req, "kind", "request.")
    gvk = GroupVersionKind(_text(kind.get("group")), _text(kind.get("version")), _text(kind.get("kind")))
    obj = req.get("object")
    old = req.get("oldObject")
    for key, value in (("object", obj), ("oldObject", old)):
        if value is not None and not isinstance(value, dict):
            raise BadReview(f"request.{key} must be an object, got {type(value).__name__}")
    if op in ("CREATE", "UPDATE") and obj is None:
        raise BadReview(f"request.object is missing for a {op}")
    if op == "UPDATE" and old is None:
        raise BadReview("request.oldObject is missing for an UPDATE")
    user = req.get("userInfo")
    # Only DaemonSet CREATE/UPDATE are judged (AdmissionRequest.is_daemonset), so only their objects
    # are shape-checked.
    sub_resource = _text(req.get("subResource"))
    judged = (
        gvk.group == "apps" and gvk.kind == "DaemonSet" and not sub_resource and op in ("CREATE", "UPDATE")
    )
    return AdmissionRequest(
        uid=uid,
        kind=gvk,
        resource=_text(_field(req, "resource", "request.").get("resource")) if req.get("resource") else "",
        sub_resource=sub_resource,
        operation=op,
        namespace=_text(req.get("namespace")),
        name=_text(req.get("name")),
        object=obj,
        old_object=old,
        dry_run=req.get("dryRun") is True,
        username=_text(user.get("username")) if isinstance(user, Mapping) else "",
        object_errors=daemonset_shape_errors(obj) if judged and obj is not None else (),
        old_object_errors=daemonset_shape_errors(old) if judged and old is not None else (),
    )


def encode(
    uid: str,
    *,
    allowed: bool,
    message: str = "",
    code: int | None = None,
    patch: Sequence[Mapping[str, Any]] = (),
    warnings: Sequence[str] = (),
) -> bytes:
    response: ResponsePayload = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code or 403, "message": message, "reason": "Forbidden"}
    elif message:
        response["status"] = {"code": code or 200, "message": message}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(patch))).decode()
    if warnings:
        response["warnings"] = list(warnings)
    payload: ReviewPayload = {"apiVersion": API_VERSION, "kind": KIND, "response": response}
    return orjson.dumps(payload)
