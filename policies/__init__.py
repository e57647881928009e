"""Scheduling policies, one per module, each written only against thundersim.core.policy.

Find the one to change by its name: policies/<name>.py; routers in policies/routers/<name>.py.
`registry.make_policy(name, options)` builds one; `thundersim policies` lists them, with the
ones installed packages add through the `thundersim.policies` and `thundersim.routers`
entry-point groups (see registry).
"""

from thundersim.policies.registry import (
    REGISTRY,
    ROUTERS,
    discover,
    make_policy,
    make_router,
    names,
    register,
    register_router,
    router_names,
)

__all__ = [
    "REGISTRY",
    "ROUTERS",
    "discover",
    "make_policy",
    "make_router",
    "names",
    "register",
    "register_router",
    "router_names",
]
