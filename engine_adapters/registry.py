"""Live engines by name: what the CLI needs to build a Backend for a server URL.

Each adapter module of this package registers its engine with `register_engine(name, factory)`
when it is imported; `discover()` imports every module of the package once, so adding an engine
(SGLang, a Dynamo worker) is one new file here. Engines of other packages register through the
entry-point group `thundersim.engines`: an entry point that names a factory is registered under
the entry point's name, one that names a module registers whatever that module registers on
import, e.g. in the plugin's pyproject.toml:

    [project.entry-points."thundersim.engines"]
    sglang = "my_plugin.sglang:SGLangBackend"

A factory is called as `factory(index, url, book)`: the replica's index in the run, its server's
URL, and the run's TokenBook (the token ids of every context, shared by all replicas of the run
so that a program moved to another replica sends the same ids). It returns an object that
implements thundersim.core.backend.Backend, not yet connected.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thundersim.core.backend import Backend
    from thundersim.engine_adapters.tokens import TokenBook

ENTRY_POINT_GROUP = "thundersim.engines"

EngineFactory = Callable[[int, str, "TokenBook"], "Backend"]


@dataclass(frozen=True, slots=True)
class Engine:
    name: str
    factory: EngineFactory
    help: str  # one line for `--help` and error messages


ENGINES: dict[str, Engine] = {}
_HERE = Path(__file__).parent
_loaded_entry_points: set[tuple[str, str]] = set()  # (name, value) already loaded


def register_engine(name: str, factory: EngineFactory, help: str = "") -> EngineFactory:
    """Register `factory` as the engine `name` (returns it, so it can decorate a class)."""
    if not name:
        raise ValueError(f"{factory!r}: an engine needs a name")
    known = ENGINES.get(name)
    if known is not None and known.factory is not factory:
        raise ValueError(f"engine name {name!r} registered twice")
    doc = (getattr(factory, "__doc__", None) or "").strip()
    ENGINES[name] = Engine(name, factory, help or (doc.splitlines()[0] if doc else ""))
    return factory


def _load_entry_points() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _loaded_entry_points:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin: say which one, not only its traceback
            raise RuntimeError(
                f"engine entry point {ep.name} = {ep.value!r} failed to load: {exc!r}"
            ) from exc
        _loaded_entry_points.add(key)
        # a module registered its engines when it was imported; anything else is the factory
        if not isinstance(obj, ModuleType):
            register_engine(ep.name, obj)


def discover() -> dict[str, Engine]:
    """Import every adapter module of this package (each registers itself), then the
    out-of-tree engines of the `thundersim.engines` entry points. Cheap after the first call:
    imports are cached and an entry point is loaded once."""
    for mod in pkgutil.iter_modules([str(_HERE)]):
        if mod.name != "registry" and not mod.ispkg:
            importlib.import_module(f"{__package__}.{mod.name}")
    _load_entry_points()
    return ENGINES


def engine_names() -> list[str]:
    return sorted(discover())


def resolve(name: str) -> Engine:
    engines = discover()
    if name not in engines:
        raise ValueError(f"unknown engine {name!r}; valid: {', '.join(sorted(engines))}")
    return engines[name]


def make_backends(name: str, urls: list[str], book: TokenBook, **options) -> list[Backend]:
    """One backend of engine `name` per URL, indexed in order, sharing the run's TokenBook;
    `options` (e.g. `timeouts` for vllm) go to each backend's constructor."""
    factory = resolve(name).factory
    if not options:
        return [factory(i, url, book) for i, url in enumerate(urls)]
    try:
        return [factory(i, url, book, **options) for i, url in enumerate(urls)]
    except TypeError as exc:
        raise ValueError(f"engine {name!r} does not take {', '.join(options)}: {exc}") from None


__all__ = [
    "ENGINES",
    "ENTRY_POINT_GROUP",
    "Engine",
    "discover",
    "engine_names",
    "make_backends",
    "register_engine",
    "resolve",
]
