"""What tests that need the local cluster's real node share: the check that the machine can run
one (fail, never skip, naming what is missing; DSGUARD_NO_REAL_NODE=1 opts out)."""

from __future__ import annotations

import os

import pytest

from localcluster import host_state

__all__ = ["require_real_node"]


def require_real_node() -> None:
    """pytest.fail naming what this machine lacks to run a real node; pytest.skip only when
    DSGUARD_NO_REAL_NODE=1 says so (docs/local-cluster.md)."""
    if os.environ.get(host_state.NO_REAL_NODE_ENV) == "1":
        pytest.skip(f"{host_state.NO_REAL_NODE_ENV}=1: the real-node tests are opted out")
    missing = host_state.missing_requirements()
    if missing:
        pytest.fail(
            "this machine cannot run the local cluster's real node; it lacks: "
            + "; ".join(missing)
            + f". ({host_state.NO_REAL_NODE_ENV}=1 opts out of these tests.)",
            pytrace=False,
        )
