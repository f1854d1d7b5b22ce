"""guard.policy_audit, the pure part of the background audit: what existing DaemonSets violate,
the DaemonSetPolicy status that reports it, and the Events to record between two audits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsguard.facts import ClusterFacts
from dsguard.scheduling import NodeInfo, Taint
from guard.policy_audit import (
    COMPLIANT,
    MAX_LISTED,
    MAX_MESSAGE,
    READY,
    Announced,
    PolicyAudit,
    Violation,
    audit,
    known_violations,
    listed_violations,
    plan_events,
    policy_status,
    status_changed,
)
from tests.support.builders import daemonset, node_info, parsed_policy

AGENT = "registry.example.com/agent"
INFRA = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
INFRA_TAINT = Taint("dedicated", "infra", "NoSchedule")
T1 = "2030-01-01T00:00:00Z"
T2 = "2030-01-01T00:05:00Z"
T3 = "2030-01-01T00:10:00Z"


# -- builders ----------------------------------------------------------------------------------


#: DaemonSets as these tests build them: in `logging`, labelled app=<name> unless given labels.
ds = partial(daemonset, namespace="logging", image=f"{AGENT}:2.1.0", app_label=True)
#: Nodes labelled kubernetes.io/hostname=<name>, on kubelet v1.33.2 unless said otherwise.
node = partial(node_info, hostname_label=True)


def cluster(*nodes: NodeInfo) -> ClusterFacts:
    return ClusterFacts(nodes=tuple(nodes), server_version="v1.33.2")


REQUIRE_INFRA: dict[str, Any] = {"match": {"namespaces": ["logging"]}, "tolerations": {"required": [INFRA]}}
VERSIONS: dict[str, Any] = {
    "match": {"namespaces": ["logging"]},
    "versions": {
        "rules": [{"image": AGENT, "compatibility": [{"kubernetes": ">=1.33.0", "versions": ">=2.0.0"}]}],
        "unknownVersion": "Warn",
    },
}
OLD_AND_NEW = cluster(
    node("old-kubelet-node", kubelet="v1.32.5"), node("new-kubelet-node", kubelet="v1.33.2")
)


def triples(results: Mapping[str, PolicyAudit]) -> set[tuple[str, str, str]]:
    return {(v.ref, v.policy, v.rule) for r in results.values() for v in r.violations}


# -- audit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    policies: dict[str, dict[str, Any]]
    daemonsets: list[dict[str, Any]]
    facts: ClusterFacts
    expected: set[tuple[str, str, str]]  # (namespace/name, policy, rule)


CASES = [
    Case("missing required toleration", {"infra": REQUIRE_INFRA}, [ds()], cluster(node("n1")),
         {("logging/agent", "infra", "tolerations")}),
    Case("required toleration present", {"infra": REQUIRE_INFRA}, [ds(tolerations=[INFRA])],
         cluster(node("n1")), set()),
    Case("a wider toleration covers the required one", {"infra": REQUIRE_INFRA},
         [ds(tolerations=[{"key": "dedicated", "operator": "Exists"}])], cluster(node("n1")), set()),
    # No mutation in the audit: a toleration an Add policy would insert is still missing from the pods.
    Case("onMissing Add still reports the missing toleration",
         {"infra": {**REQUIRE_INFRA, "tolerations": {"required": [INFRA], "onMissing": "Add"}}},
         [ds()], cluster(node("n1")), {("logging/agent", "infra", "tolerations")}),
    Case("image too old for a node's kubelet", {"versions": VERSIONS}, [ds(image=f"{AGENT}:1.9.0")],
         OLD_AND_NEW, {("logging/agent", "versions", "versions")}),
    Case("image compatible with every kubelet", {"versions": VERSIONS}, [ds(image=f"{AGENT}:2.0.0")],
         OLD_AND_NEW, set()),
    Case("old image only on old kubelets is fine", {"versions": VERSIONS}, [ds(image=f"{AGENT}:1.9.0")],
         cluster(node("old-kubelet-node", kubelet="v1.32.5")), set()),
    Case("untagged image under unknownVersion Warn is a warning, not a violation", {"versions": VERSIONS},
         [ds(image=AGENT)], OLD_AND_NEW, set()),
    Case("untagged image under unknownVersion Deny is a violation",
         {"versions": {**VERSIONS, "versions": {**VERSIONS["versions"], "unknownVersion": "Deny"}}},
         [ds(image=AGENT)], OLD_AND_NEW, {("logging/agent", "versions", "versions")}),
    Case("node the DaemonSet doesn't tolerate under coverage",
         {"cover": {"tolerations": {"coverage": {"nodeSelector": {}}}}}, [ds(namespace="kube-system")],
         cluster(node("n1"), node("infra-1", taints=[INFRA_TAINT])),
         {("kube-system/agent", "cover", "coverage")}),
    Case("rollout over the cap", {"caps": {"rollout": {"maxUnavailable": 1}}}, [ds(max_unavailable=3)],
         cluster(*(node(f"n{i}") for i in range(5))), {("logging/agent", "caps", "rollout")}),
    Case("rollout within the cap", {"caps": {"rollout": {"maxUnavailable": "50%"}}}, [ds(max_unavailable=2)],
         cluster(*(node(f"n{i}") for i in range(5))), set()),
    Case("DaemonSet outside the policy's namespaces doesn't count", {"infra": REQUIRE_INFRA},
         [ds(namespace="monitoring")], cluster(node("n1")), set()),
    Case("DaemonSet outside the policy's selector doesn't count",
         {"infra": {**REQUIRE_INFRA, "match": {"selector": {"matchLabels": {"tier": "node"}}}}},
         [ds(labels={"tier": "web"}, app_label=False), ds("other", labels={"tier": "node"}, app_label=False)],
         cluster(node("n1")),
         {("logging/other", "infra", "tolerations")}),
    Case("two policies, two rules, one DaemonSet",
         {"infra": REQUIRE_INFRA, "versions": VERSIONS}, [ds(image=f"{AGENT}:1.0.0")], OLD_AND_NEW,
         {("logging/agent", "infra", "tolerations"), ("logging/agent", "versions", "versions")}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_audit_finds_violations(case: Case) -> None:
    policies = [parsed_policy(name, spec) for name, spec in case.policies.items()]
    results = audit(policies, case.daemonsets, case.facts)
    assert set(results) == set(case.policies)
    assert triples(results) == case.expected
    for r in results.values():
        assert {v.policy for v in r.violations} <= {r.policy}
        assert set(r.violating) <= set(r.matched)


def test_version_violation_names_the_node_and_kubelet() -> None:
    results = audit([parsed_policy("versions", VERSIONS)], [ds(image=f"{AGENT}:1.9.0")], OLD_AND_NEW)
    (v,) = results["versions"].violations
    assert "new-kubelet-node" in v.message
    assert "v1.33.2" in v.message
    assert "old-kubelet-node" not in v.message  # 1.9.0 is fine on kubelet 1.32


def test_toleration_violation_names_the_missing_toleration() -> None:
    results = audit([parsed_policy("infra", REQUIRE_INFRA)], [ds()], cluster(node("n1")))
    (v,) = results["infra"].violations
    assert (v.namespace, v.name, v.policy, v.rule) == ("logging", "agent", "infra", "tolerations")
    assert "key: dedicated" in v.message and "value: infra" in v.message


@pytest.mark.parametrize("enforcement", ["Audit", "Warn", "Enforce"])
def test_every_enforcement_is_audited(enforcement: str) -> None:
    p = parsed_policy("infra", {**REQUIRE_INFRA, "enforcement": enforcement})
    results = audit([p], [ds(), ds("ok", tolerations=[INFRA])], cluster(node("n1")))
    assert results["infra"].matched == ("logging/agent", "logging/ok")
    assert results["infra"].violating == ("logging/agent",)


def test_policy_matching_nothing_still_has_an_audit() -> None:
    results = audit(
        [
            parsed_policy("infra", REQUIRE_INFRA),
            parsed_policy("nothing", {**REQUIRE_INFRA, "match": {"namespaces": ["nowhere"]}}),
        ],
        [ds()],
        cluster(node("n1")),
    )
    assert results["nothing"] == PolicyAudit("nothing", (), ())
    assert results["infra"].matched == ("logging/agent",)


def test_no_daemonsets_no_violations() -> None:
    results = audit([parsed_policy("infra", REQUIRE_INFRA)], [], cluster(node("n1")))
    assert results == {"infra": PolicyAudit("infra", (), ())}


def test_violations_sorted_by_daemonset_then_rule_and_matched_sorted() -> None:
    p = parsed_policy("both", {**REQUIRE_INFRA, "versions": VERSIONS["versions"]})
    daemonsets = [
        ds("zeta", image=f"{AGENT}:1.0.0"),
        ds("alpha", image=f"{AGENT}:1.0.0"),
        ds("mid", tolerations=[INFRA]),
    ]
    result = audit([p], daemonsets, OLD_AND_NEW)["both"]
    assert result.matched == ("logging/alpha", "logging/mid", "logging/zeta")
    assert [(v.name, v.rule) for v in result.violations] == [
        ("alpha", "tolerations"), ("alpha", "versions"), ("zeta", "tolerations"), ("zeta", "versions"),
    ]  # fmt: skip
    assert result.violating == ("logging/alpha", "logging/zeta")


def test_daemonset_without_namespace_is_in_default() -> None:
    obj = ds()
    del obj["metadata"]["namespace"]
    results = audit(
        [parsed_policy("all", {"tolerations": {"required": [INFRA]}})], [obj], cluster(node("n1"))
    )
    assert results["all"].violating == ("default/agent",)


# -- listed_violations ---------------------------------------------------------------------------


def violation(i: int, rule: str = "tolerations", message: str = "missing", ns: str = "logging") -> Violation:
    return Violation(ns, f"ds-{i:03d}", "p", rule, message)


def audit_of(violations: Sequence[Violation], matched: int | None = None) -> PolicyAudit:
    vs = tuple(sorted(set(violations)))
    refs = sorted({v.ref for v in vs})
    extra = [f"logging/compliant-{i}" for i in range((matched or len(refs)) - len(refs))]
    return PolicyAudit("p", tuple(sorted(refs + extra)), vs)


def test_listed_violations_bounded_to_max_listed() -> None:
    result = audit_of([violation(i) for i in range(MAX_LISTED + 5)])
    listed = listed_violations(result)
    assert len(listed) == MAX_LISTED
    assert [e["name"] for e in listed] == [f"ds-{i:03d}" for i in range(MAX_LISTED)]


def test_listed_violations_join_rules_per_daemonset() -> None:
    result = audit_of(
        [
            violation(1, "versions", "image a too old"),
            violation(1, "tolerations", "missing infra"),
            violation(1, "versions", "image b too old"),
            violation(2, "rollout", "too fast"),
        ]
    )
    listed = listed_violations(result)
    assert listed == [
        {
            "namespace": "logging", "name": "ds-001", "rules": ["tolerations", "versions"],
            "message": "tolerations: missing infra; versions: image a too old; versions: image b too old",
        },
        {"namespace": "logging", "name": "ds-002", "rules": ["rollout"], "message": "rollout: too fast"},
    ]  # fmt: skip


def test_listed_message_clipped_to_max_message() -> None:
    result = audit_of([violation(1, "versions", "x" * (MAX_MESSAGE * 2)), violation(2, "rollout", "short")])
    first, second = listed_violations(result)
    assert len(first["message"]) == MAX_MESSAGE
    assert first["message"].startswith("versions: xxx") and first["message"].endswith("…")
    assert second["message"] == "rollout: short"


def test_message_of_exactly_max_message_is_not_clipped() -> None:
    text = "y" * (MAX_MESSAGE - len("rollout: "))
    (entry,) = listed_violations(audit_of([violation(1, "rollout", text)]))
    assert entry["message"] == f"rollout: {text}"


violations_strategy = st.lists(
    st.builds(
        Violation,
        namespace=st.sampled_from(["logging", "monitoring", "kube-system"]),
        name=st.sampled_from([f"ds-{i}" for i in range(40)]),
        policy=st.just("p"),
        rule=st.sampled_from(["tolerations", "coverage", "versions", "rollout"]),
        message=st.text(max_size=MAX_MESSAGE // 2),
    ),
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(violations_strategy, st.integers(min_value=0, max_value=10))
def test_status_counts_are_exact_and_list_bounded(violations: list[Violation], compliant: int) -> None:
    by_ds: dict[tuple[str, str], set[str]] = {}
    for v in violations:
        by_ds.setdefault((v.namespace, v.name), set()).add(v.rule)
    result = audit_of(violations, matched=len(by_ds) + compliant)
    listed = listed_violations(result)
    assert len(listed) == min(MAX_LISTED, len(by_ds))
    for entry in listed:
        assert len(entry["message"]) <= MAX_MESSAGE
        assert set(entry["rules"]) == by_ds[(entry["namespace"], entry["name"])]
        assert entry["rules"] == sorted(entry["rules"])
    assert len({(e["namespace"], e["name"]) for e in listed}) == len(listed)
    status = policy_status(result, error=None, enforced=True, generation=1, previous={}, now=T1)
    assert status["violationCount"] == len(by_ds)
    assert status["matchedDaemonSets"] == len(by_ds) + compliant
    assert status["unlistedViolations"] == len(by_ds) - len(listed)
    compliant_cond = condition(status, COMPLIANT)
    assert compliant_cond["status"] == ("False" if by_ds else "True")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["logging", "monitoring"]),
            st.booleans(),  # tolerates the infra taint
            st.sampled_from(["1.0.0", "1.9.9", "2.0.0", "3.1.0", None]),  # None: untagged (Warn)
        ),
        max_size=45,
    )
)
def test_violation_count_is_the_number_of_violating_daemonsets(
    specs: list[tuple[str, bool, str | None]],
) -> None:
    p = parsed_policy("agents", {**REQUIRE_INFRA, "versions": VERSIONS["versions"]})
    daemonsets = [
        ds(
            f"ds-{i}",
            namespace=ns,
            image=f"{AGENT}:{version}" if version else AGENT,
            tolerations=[INFRA] if tolerates else [],
        )
        for i, (ns, tolerates, version) in enumerate(specs)
    ]
    expected = {
        f"{ns}/ds-{i}"
        for i, (ns, tolerates, version) in enumerate(specs)
        if ns == "logging" and (not tolerates or version in ("1.0.0", "1.9.9"))
    }
    result = audit([p], daemonsets, OLD_AND_NEW)["agents"]
    assert set(result.violating) == expected
    assert len(result.matched) == sum(1 for ns, _, _ in specs if ns == "logging")
    status = policy_status(result, error=None, enforced=True, generation=1, previous={}, now=T1)
    assert status["violationCount"] == len(expected)
    assert len(status["violations"]) == min(MAX_LISTED, len(expected))
    assert status["unlistedViolations"] == len(expected) - len(status["violations"])


# -- policy_status -------------------------------------------------------------------------------


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == type_]
    return dict(found)


CLEAN = PolicyAudit("p", ("logging/a", "logging/b"), ())
DIRTY = PolicyAudit("p", ("logging/a", "logging/b"), (violation(1), violation(1, "versions", "old")))


@pytest.mark.parametrize(
    ("result", "error", "enforced", "ready", "compliant", "fragments"),
    [
        (CLEAN, None, True, ("True", "Valid"), ("True", "NoViolations"), ["all 2 governed"]),
        (DIRTY, None, True, ("True", "Valid"), ("False", "ViolationsFound"), ["1 of 2", "logging/ds-001"]),
        (DIRTY, "spec.x: bad", True, ("False", "InvalidSpec"), ("False", "ViolationsFound"),
         ["spec.x: bad", "still enforcing its previous valid version"]),
        (None, "spec.x: bad", False, ("False", "InvalidSpec"), ("Unknown", "NotAudited"),
         ["spec.x: bad", "not enforced until fixed"]),
    ],
    ids=["compliant", "violations", "invalid-still-enforced", "invalid-not-enforced"],
)  # fmt: skip
def test_policy_status_conditions(
    result: PolicyAudit | None,
    error: str | None,
    enforced: bool,
    ready: tuple[str, str],
    compliant: tuple[str, str],
    fragments: list[str],
) -> None:
    status = policy_status(result, error=error, enforced=enforced, generation=7, previous={}, now=T1)
    r, c = condition(status, READY), condition(status, COMPLIANT)
    assert (r["status"], r["reason"]) == ready
    assert (c["status"], c["reason"]) == compliant
    text = r["message"] + " | " + c["message"]
    for fragment in fragments:
        assert fragment in text
    assert status["observedGeneration"] == 7
    assert r["observedGeneration"] == c["observedGeneration"] == 7
    assert r["lastTransitionTime"] == c["lastTransitionTime"] == T1
    assert status["auditedAt"] == T1


def test_invalid_spec_detail_depends_on_enforced() -> None:
    kept = condition(policy_status(DIRTY, error="e", enforced=True, generation=1, previous={}, now=T1), READY)
    lost = condition(policy_status(None, error="e", enforced=False, generation=1, previous={}, now=T1), READY)
    assert "not enforced until fixed" not in kept["message"]
    assert "still enforcing" not in lost["message"]


def test_not_audited_status_has_every_key_a_merge_patch_needs() -> None:
    audited = policy_status(DIRTY, error=None, enforced=True, generation=1, previous={}, now=T1)
    status = policy_status(None, error="e", enforced=False, generation=2, previous=audited, now=T2)
    # A merge patch keeps the keys it doesn't mention: every one of them must be overwritten.
    assert set(status) == set(audited)
    assert (status["matchedDaemonSets"], status["violationCount"], status["violations"]) == (0, 0, [])
    assert status["unlistedViolations"] == 0


def test_last_transition_time_kept_while_status_unchanged() -> None:
    first = policy_status(DIRTY, error=None, enforced=True, generation=1, previous={}, now=T1)
    again = policy_status(DIRTY, error=None, enforced=True, generation=2, previous=first, now=T2)
    assert condition(again, READY)["lastTransitionTime"] == T1
    assert condition(again, COMPLIANT)["lastTransitionTime"] == T1
    assert condition(again, COMPLIANT)["observedGeneration"] == 2
    assert again["auditedAt"] == T2


def test_last_transition_time_moves_with_the_status() -> None:
    first = policy_status(DIRTY, error=None, enforced=True, generation=1, previous={}, now=T1)
    fixed = policy_status(CLEAN, error=None, enforced=True, generation=1, previous=first, now=T2)
    assert condition(fixed, COMPLIANT)["lastTransitionTime"] == T2
    assert condition(fixed, READY)["lastTransitionTime"] == T1  # Ready stayed True
    broken = policy_status(CLEAN, error="bad", enforced=True, generation=2, previous=fixed, now=T3)
    assert condition(broken, READY)["lastTransitionTime"] == T3
    assert condition(broken, COMPLIANT)["lastTransitionTime"] == T2


def test_same_status_different_reason_keeps_transition_time() -> None:
    # metav1.Condition: lastTransitionTime is about the status; a new message or reason isn't a transition.
    first = policy_status(DIRTY, error=None, enforced=True, generation=1, previous={}, now=T1)
    more = PolicyAudit("p", DIRTY.matched, (*DIRTY.violations, violation(2)))
    second = policy_status(more, error=None, enforced=True, generation=1, previous=first, now=T2)
    assert condition(second, COMPLIANT)["message"] != condition(first, COMPLIANT)["message"]
    assert condition(second, COMPLIANT)["lastTransitionTime"] == T1


def test_unlisted_violations_counted() -> None:
    result = audit_of([violation(i) for i in range(MAX_LISTED + 7)], matched=MAX_LISTED + 10)
    status = policy_status(result, error=None, enforced=True, generation=1, previous={}, now=T1)
    assert status["violationCount"] == MAX_LISTED + 7
    assert len(status["violations"]) == MAX_LISTED
    assert status["unlistedViolations"] == 7
    assert status["matchedDaemonSets"] == MAX_LISTED + 10
    assert "and 22 more" in condition(status, COMPLIANT)["message"]  # 27 violating, 5 named


def test_condition_message_clipped() -> None:
    status = policy_status(None, error="e" * 40000, enforced=False, generation=1, previous={}, now=T1)
    assert len(condition(status, READY)["message"]) == 32768


# -- status_changed ------------------------------------------------------------------------------


def test_status_changed_ignores_audited_at_only() -> None:
    first = policy_status(DIRTY, error=None, enforced=True, generation=1, previous={}, now=T1)
    later = policy_status(DIRTY, error=None, enforced=True, generation=1, previous=first, now=T2)
    assert later["auditedAt"] != first["auditedAt"]
    assert not status_changed(later, first)
    fixed = policy_status(CLEAN, error=None, enforced=True, generation=1, previous=first, now=T2)
    assert status_changed(fixed, first)
    bumped = policy_status(DIRTY, error=None, enforced=True, generation=2, previous=first, now=T2)
    assert status_changed(bumped, first)  # observedGeneration


@pytest.mark.parametrize(
    "key", ["violationCount", "unlistedViolations", "matchedDaemonSets", "observedGeneration"]
)
def test_status_changed_sees_every_other_key(key: str) -> None:
    stored = policy_status(DIRTY, error=None, enforced=True, generation=1, previous={}, now=T1)
    assert status_changed({**stored, key: stored[key] + 1}, stored)


def test_status_changed_against_empty_stored_status() -> None:
    new = policy_status(CLEAN, error=None, enforced=True, generation=1, previous={}, now=T1)
    assert status_changed(new, {})


# -- known_violations ----------------------------------------------------------------------------


def test_known_violations_from_a_stored_status() -> None:
    stored = policy_status(
        audit_of([violation(1), violation(1, "versions", "x"), violation(2, "rollout", "y")]),
        error=None, enforced=True, generation=1, previous={}, now=T1,
    )  # fmt: skip
    known = known_violations(stored, "p")
    assert all(a.messages is None for a in known.values())  # its words are not in the status
    assert set(known) == {
        ("p", "logging", "ds-001", "tolerations"),
        ("p", "logging", "ds-001", "versions"),
        ("p", "logging", "ds-002", "rollout"),
    }


@pytest.mark.parametrize(
    "stored",
    [
        {},
        {"violations": None},
        {"violations": []},
        {"violations": ["junk", 3]},
        {"violations": [{"name": "x"}]},
    ],
)
def test_known_violations_tolerates_odd_statuses(stored: dict[str, Any]) -> None:
    assert known_violations(stored, "p") == {}


def test_known_violations_only_the_listed_ones() -> None:
    stored = policy_status(
        audit_of([violation(i) for i in range(MAX_LISTED + 3)]),
        error=None, enforced=True, generation=1, previous={}, now=T1,
    )  # fmt: skip
    assert len(known_violations(stored, "p")) == MAX_LISTED


# -- plan_events ---------------------------------------------------------------------------------


def results_of(*violations: Violation) -> dict[str, PolicyAudit]:
    by_policy: dict[str, list[Violation]] = {}
    for v in violations:
        by_policy.setdefault(v.policy, []).append(v)
    return {
        p: PolicyAudit(p, tuple(sorted({v.ref for v in vs})), tuple(sorted(set(vs))))
        for p, vs in by_policy.items()
    }


A_TOL = Violation("logging", "a", "p", "tolerations", "missing infra")
A_VER = Violation("logging", "a", "p", "versions", "image 1 too old")
A_VER2 = Violation("logging", "a", "p", "versions", "image 2 too old")
B_TOL = Violation("logging", "b", "p", "tolerations", "missing infra")
A_Q = Violation("logging", "a", "q", "rollout", "too fast")
PRESENT = {("logging", "a"), ("logging", "b")}


def test_first_audit_announces_one_event_per_daemonset_policy_rule() -> None:
    results = results_of(A_TOL, A_VER, A_VER2, B_TOL, A_Q)
    plan, after = plan_events(results, {}, PRESENT)
    assert [(v.policy, v.namespace, v.name, v.rule) for v in plan.new] == [
        ("p", "logging", "a", "tolerations"),
        ("p", "logging", "a", "versions"),  # two messages for one rule: one Event
        ("p", "logging", "b", "tolerations"),
        ("q", "logging", "a", "rollout"),
    ]
    assert plan.resolved == () and plan.changed == ()
    assert set(after) == {(v.policy, v.namespace, v.name, v.rule) for v in plan.new}
    assert after[("p", "logging", "a", "versions")].messages == ("image 1 too old", "image 2 too old")


def test_second_run_with_nothing_changed_is_silent() -> None:
    results = results_of(A_TOL, A_VER, B_TOL, A_Q)
    _, before = plan_events(results, {}, PRESENT)
    plan, after = plan_events(results, before, PRESENT, now=1000.0)
    assert plan.new == () and plan.changed == () and plan.resolved == ()
    assert after == before


def test_new_violation_only_is_announced() -> None:
    _, before = plan_events(results_of(A_TOL), {}, PRESENT)
    plan, _ = plan_events(results_of(A_TOL, B_TOL), before, PRESENT)
    assert plan.new == (B_TOL,)
    assert plan.resolved == ()


def test_fixed_violation_is_resolved_once() -> None:
    _, before = plan_events(results_of(A_TOL, A_VER, B_TOL), {}, PRESENT)
    plan, after = plan_events(results_of(A_TOL, B_TOL), before, PRESENT)
    assert plan.new == ()
    assert plan.resolved == (("p", "logging", "a", "versions"),)
    plan, _ = plan_events(results_of(A_TOL, B_TOL), after, PRESENT)
    assert plan.resolved == ()


def test_policy_with_no_violation_left_resolves() -> None:
    _, before = plan_events(results_of(A_TOL), {}, PRESENT)
    plan, after = plan_events({"p": PolicyAudit("p", ("logging/a",), ())}, before, PRESENT)
    assert plan.resolved == (("p", "logging", "a", "tolerations"),)
    assert after == {}


def test_deleted_daemonset_is_not_resolved() -> None:
    _, before = plan_events(results_of(A_TOL, B_TOL), {}, PRESENT)
    plan, after = plan_events(results_of(A_TOL), before, {("logging", "a")})
    assert plan.resolved == ()
    assert set(after) == {("p", "logging", "a", "tolerations")}


def test_deleted_policy_is_not_resolved() -> None:
    _, before = plan_events(results_of(A_TOL, A_Q), {}, PRESENT)
    plan, after = plan_events(results_of(A_TOL), before, PRESENT)  # q is gone from the results
    assert plan.resolved == ()
    assert set(after) == {("p", "logging", "a", "tolerations")}


def test_known_violations_suppress_events_after_restart() -> None:
    results = results_of(A_TOL, B_TOL)
    stored = policy_status(results["p"], error=None, enforced=True, generation=1, previous={}, now=T1)
    plan, _ = plan_events(results_of(A_TOL, B_TOL, A_VER), known_violations(stored, "p"), PRESENT)
    assert plan.new == (A_VER,)


A_TOL_MORE = Violation("logging", "a", "p", "tolerations", "missing infra and gpu")


def test_a_changed_violation_is_announced_again_at_most_once_an_interval() -> None:
    _, before = plan_events(results_of(A_TOL), {}, PRESENT, now=100.0, change_interval=300.0)
    # changed 10 s later: too soon, and what was said is kept so that a later audit says it
    plan, after = plan_events(results_of(A_TOL_MORE), before, PRESENT, now=110.0, change_interval=300.0)
    assert plan.new == () and plan.changed == ()
    assert after == before
    plan, after = plan_events(results_of(A_TOL_MORE), after, PRESENT, now=400.0, change_interval=300.0)
    assert plan.changed == ((("p", "logging", "a", "tolerations"), ("missing infra and gpu",)),)
    assert after[("p", "logging", "a", "tolerations")].at == 400.0
    # said once: the next audits are silent
    plan, _ = plan_events(results_of(A_TOL_MORE), after, PRESENT, now=1000.0, change_interval=300.0)
    assert plan.changed == ()
    # a second message under the same rule is a change too
    plan, _ = plan_events(results_of(A_TOL_MORE, A_VER), after, PRESENT, now=400.0, change_interval=0.0)
    assert plan.new == (A_VER,) and plan.changed == ()
    plan, _ = plan_events(results_of(A_VER, A_VER2), {
        ("p", "logging", "a", "versions"): Announced(("image 1 too old",), 0.0)
    }, PRESENT, now=1.0, change_interval=0.0)  # fmt: skip
    assert plan.changed == ((("p", "logging", "a", "versions"), ("image 1 too old", "image 2 too old")),)


def test_after_a_restart_the_known_violations_words_are_learned_not_announced() -> None:
    stored = policy_status(
        results_of(A_TOL)["p"], error=None, enforced=True, generation=1, previous={}, now=T1
    )
    known = known_violations(stored, "p")
    plan, after = plan_events(results_of(A_TOL_MORE), known, PRESENT, now=5.0)
    assert plan.new == () and plan.changed == ()
    # a change after that is announced at once: nothing was said in this term yet
    plan, _ = plan_events(results_of(A_TOL), after, PRESENT, now=6.0)
    assert plan.changed == ((("p", "logging", "a", "tolerations"), ("missing infra",)),)
