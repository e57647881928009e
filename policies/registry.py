"""Policies and routers by name. A module registers its class with `@register` (policies) or
`@register_router` (routers); every module of this package and of policies/routers is imported
once by `discover()`, so adding a policy or a router is adding one file.

Out-of-tree policies and routers come from installed packages, through the entry-point groups
`thundersim.policies` and `thundersim.routers`: each entry point names a class, registered
under its `name` like the built-ins (the entry point's name must be that name), e.g. in the
package's pyproject.toml:

    [project.entry-points."thundersim.policies"]
    mine = "my_package.mine:MyPolicy"

A plugin that cannot be loaded, is not a Policy (Router) or takes a name already registered
fails the lookup with the entry point and its distribution named: a policy never goes missing
silently.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata
from pathlib import Path

from thundersim.core.policy import Policy, PolicyOptions, Router

REGISTRY: dict[str, type[Policy]] = {}
ALIASES: dict[str, str] = {}  # alternative name -> registered name
ROUTERS: dict[str, type[Router]] = {}
POLICY_GROUP = "thundersim.policies"  # entry-point groups of out-of-tree classes
ROUTER_GROUP = "thundersim.routers"
ORIGINS: dict[type, str] = {}  # an out-of-tree class -> the distribution that provides it

_HERE = Path(__file__).parent
_plugins_loaded = False


class PluginError(ValueError):
    """An entry point of a thundersim group that does not give a usable class."""


def register(cls: type[Policy]) -> type[Policy]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    for alias in cls.aliases:
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
    """Import every policy and router module (each registers itself), then the installed
    plugins (once per process)."""
    for folder, package in ((_HERE, __package__), (_HERE / "routers", f"{__package__}.routers")):
        for mod in pkgutil.iter_modules([str(folder)]):
            if mod.name != "registry" and not mod.ispkg:
                importlib.import_module(f"{package}.{mod.name}")
    _load_plugins()
    return REGISTRY


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=group), key=lambda ep: (ep.name, ep.value))


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    for group, base, add, known in (
        (POLICY_GROUP, Policy, register, REGISTRY),
        (ROUTER_GROUP, Router, register_router, ROUTERS),
    ):
        for ep in _entry_points(group):
            cls = _plugin_class(ep, base)
            if cls.name in known and known[cls.name] is not cls:
                raise PluginError(
                    f"{_where(ep)}: the name {cls.name!r} is taken by "
                    f"{origin(known[cls.name])} ({known[cls.name].__module__})"
                )
            ORIGINS[cls] = _distribution(ep)
            add(cls)
    _plugins_loaded = True


def _plugin_class(ep: metadata.EntryPoint, base: type) -> type:
    """The class an entry point names, checked: a subclass of `base` registered under the
    entry point's name."""
    try:
        cls = ep.load()
    except Exception as exc:  # a plugin's own import error, whatever it is, named
        raise PluginError(f"{_where(ep)}: cannot load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{_where(ep)}: {cls!r} is not a subclass of {base.__qualname__}")
    if cls.name != ep.name:
        raise PluginError(
            f"{_where(ep)}: the class is named {cls.name!r}; name the entry point {cls.name!r}"
        )
    return cls


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else ep.value


def _where(ep: metadata.EntryPoint) -> str:
    return f"entry point {ep.name} = {ep.value} ({ep.group}, from {_distribution(ep)})"


def origin(cls: type) -> str:
    """Where a policy or router comes from: "built-in", or the distribution of a plugin."""
    if cls in ORIGINS:
        return ORIGINS[cls]
    return "built-in" if cls.__module__.startswith(__package__) else cls.__module__


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
