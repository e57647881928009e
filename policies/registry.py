"""Policies and routers by name. A module registers its class with `@register` (policies) or
`@register_router` (routers); every module of this package and of policies/routers is imported
once by `discover()`, so adding a policy or a router is adding one file."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from thundersim.core.policy import Policy, PolicyOptions, Router

REGISTRY: dict[str, type[Policy]] = {}
ALIASES: dict[str, str] = {}  # alternative name -> registered name
ROUTERS: dict[str, type[Router]] = {}

_HERE = Path(__file__).parent


def register(cls: type[Policy]) -> type[Policy]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    for alias in getattr(cls, "aliases", ()):
        ALIASES[alias] = cls.name
    return cls


def register_router(cls: type[Router]) -> type[Router]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in ROUTERS and ROUTERS[cls.name] is not cls:
        raise ValueError(f"router name {cls.name!r} registered twice")
    ROUTERS[cls.name] = cls
    return cls


def discover() -> dict[str, type[Policy]]:
    """Import every policy and router module (each registers itself)."""
    for folder, package in ((_HERE, __package__), (_HERE / "routers", f"{__package__}.routers")):
        for mod in pkgutil.iter_modules([str(folder)]):
            if mod.name != "registry" and not mod.ispkg:
                importlib.import_module(f"{package}.{mod.name}")
    return REGISTRY


def names() -> list[str]:
    return sorted(discover())


def router_names() -> list[str]:
    discover()
    return sorted(ROUTERS)


def resolve(name: str) -> type[Policy]:
    registry = discover()
    name = ALIASES.get(name, name)
    if name not in registry:
        valid = sorted(list(registry) + list(ALIASES))
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(valid)}")
    return registry[name]


def make_policy(name: str, options: PolicyOptions | None = None) -> Policy:
    options = options or PolicyOptions()
    make_router(options.router)  # fail early, with the list, on a bad router name
    return resolve(name)(options)


def make_router(name: str) -> Router:
    discover()
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; valid: {', '.join(sorted(ROUTERS))}")
    return ROUTERS[name]()


def describe(cls: type) -> str:
    """The first line of a policy's or router's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
