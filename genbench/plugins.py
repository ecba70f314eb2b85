"""Plugin loading and the component registry: the one place that knows who provides what.

Plugins come from the ``genbench`` entry-point group (built-ins included: they are
shipped in this distribution and registered the same way). Environment variables:

- ``GENBENCH_PLUGINS``: comma-separated allow-list of *third-party* entry points;
  set it empty to load built-ins only (the tests do this).
- ``GENBENCH_DISABLE_PLUGINS``: comma-separated deny-list (any entry point).

A plugin that fails to import, misspells a hook, raises in a hook or registers a
duplicate name is reported in :attr:`Registry.failed`; the rest keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from genbench import hookspecs
from genbench.components import KINDS, Component

DIST_NAME = "genbench"
HOOK_FOR_KIND = {
    "dataset": "register_datasets",
    "model": "register_models",
    "regularizer": "register_regularizers",
    "volume_estimator": "register_volume_estimators",
    "measure": "register_measures",
    "executor": "register_executors",
}


class PluginError(Exception):
    """A component lookup or registration problem, with a message fit for one line."""


@dataclass(frozen=True)
class Entry:
    """A registered component and where it came from (stored with every result)."""

    cls: type[Component]
    plugin: str
    plugin_version: str

    @property
    def provenance(self) -> dict[str, str]:
        return {"kind": self.cls.kind, "name": self.cls.name, "version": str(self.cls.version),
                "plugin": self.plugin, "plugin_version": self.plugin_version}


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    components: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Registry:
    components: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS})
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``, or a one-line error listing what exists."""
        table = self.components[kind]
        if name in table:
            return table[name]
        import difflib

        known = sorted(table)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PluginError(f"unknown {kind.replace('_', ' ')} '{name}'{hint}; "
                          f"available: {', '.join(known) or 'none'}")

    def create(self, kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
        """An instance of component ``name`` with ``params`` (validated by its Params)."""
        cls = self.get(kind, name).cls
        return cls(cls.Params(**(params or {})))

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    # -- registration -------------------------------------------------------------
    def _register(self, plugin: PluginInfo, expected_kind: str, cls: Any) -> None:
        base = KINDS[expected_kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{HOOK_FOR_KIND[expected_kind]} got {cls!r}, "
                              f"expected a subclass of genbench.components.{base.__name__}")
        if not cls.name:
            raise PluginError(f"{cls.__qualname__} has no name")
        table = self.components[expected_kind]
        if cls.name in table:
            other = table[cls.name].plugin
            raise PluginError(f"duplicate {expected_kind.replace('_', ' ')} name '{cls.name}': "
                              f"registered by both '{other}' and '{plugin.name}'")
        table[cls.name] = Entry(cls, plugin.name, plugin.version)
        plugin.components.append(f"{expected_kind}:{cls.name}")

    def add_plugin(self, module: Any, name: str, version: str, builtin: bool = False) -> PluginInfo:
        """Register one plugin object/module; failures are recorded, never raised."""
        info = PluginInfo(name=name, version=version, builtin=builtin)
        self.plugins[name] = info
        pm = pluggy.PluginManager("genbench")
        pm.add_hookspecs(hookspecs)
        snapshot = {k: dict(v) for k, v in self.components.items()}
        try:
            pm.register(module, name=name)
            pm.check_pending()  # a misspelled hook name is an error, not silence
            for kind, hook_name in HOOK_FOR_KIND.items():
                for impl in getattr(pm.hook, hook_name).get_hookimpls():
                    impl.function(register=lambda cls, kind=kind: self._register(info, kind, cls))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break genbench
            self.components = snapshot
            info.components.clear()
            info.error = f"{type(exc).__name__}: {exc}"
        return info


def _split_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {s.strip() for s in raw.split(",") if s.strip()}


def load_registry(extra: list[tuple[str, Any]] | None = None) -> Registry:
    """Load every plugin from the ``genbench`` entry-point group, plus ``extra``
    ``(name, module)`` pairs (used by tests and library callers)."""
    registry = Registry()
    allow = _split_env("GENBENCH_PLUGINS")
    deny = _split_env("GENBENCH_DISABLE_PLUGINS") or set()
    eps = sorted(entry_points(group="genbench"),
                 key=lambda ep: (ep.dist is None or ep.dist.name != DIST_NAME, ep.name))
    for ep in eps:
        builtin = ep.dist is not None and ep.dist.name == DIST_NAME
        if ep.name in deny or (not builtin and allow is not None and ep.name not in allow):
            continue
        version = ep.dist.version if ep.dist is not None else "unknown"
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001
            registry.plugins[ep.name] = PluginInfo(ep.name, version, builtin,
                                                   error=f"{type(exc).__name__}: {exc}")
            continue
        registry.add_plugin(module, ep.name, version, builtin=builtin)
    for name, module in extra or []:
        registry.add_plugin(module, name, getattr(module, "__version__", "unknown"))
    return registry


_cached: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded once."""
    global _cached
    if _cached is None:
        _cached = load_registry()
    return _cached


def reset_registry() -> None:
    global _cached
    _cached = None
