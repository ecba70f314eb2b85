"""Plugin loading and the component registry: the one place that knows who provides what.

Plugins come from the ``genbench`` entry-point group (built-ins included: they are
shipped in this distribution and registered the same way). Environment variables:

- ``GENBENCH_PLUGINS``: comma-separated allow-list of *third-party* entry points;
  set it empty to load built-ins only (the tests do this).
- ``GENBENCH_DISABLE_PLUGINS``: comma-separated deny-list (any entry point).

A plugin that fails to import, misspells a hook, raises in a hook or registers a
duplicate name is reported in :attr:`Registry.failed`; the rest keeps working.
"Raises" means any ``BaseException`` (``sys.exit`` included) except
``KeyboardInterrupt``: Ctrl-C and SIGTERM (see :mod:`genbench.limits`) must still
stop genbench, while a plugin must never end the process (see :func:`contain`).
"""

from __future__ import annotations

import math
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


def contain(exc: BaseException) -> str:
    """The one-line error of something plugin code raised, for storing as its failure.

    Call it in an ``except BaseException`` block around plugin code: it re-raises
    ``KeyboardInterrupt`` (Ctrl-C, and SIGTERM as :class:`genbench.limits.Terminated`),
    the only exceptions a plugin may not swallow for us, and describes the rest:
    ``sys.exit`` in a plugin fails that plugin or value, never the process.
    """
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, SystemExit):
        return f"SystemExit: plugin code called sys.exit({exc.code!r})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def measure_value(raw: object) -> float:
    """The float a measure's ``compute`` returned (a number, or ``{"value": number, ...}``);
    ``ValueError`` naming what came back instead (NaN, inf, a string, None, a tensor)."""
    import numbers

    value = raw.get("value") if isinstance(raw, dict) else raw
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        what = type(value).__module__.split(".")[0] + "." + type(value).__qualname__ \
            if type(value).__module__ != "builtins" else type(value).__name__
        hint = " (call .item() on a one-element tensor)" if "Tensor" in what else ""
        raise ValueError(f"compute returned {what}, not a number{hint}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"compute returned a non-finite value ({value})")
    return value


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
    attempted: list[str] = field(default_factory=list)  # kind:name it tried to register


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
                          f"available: {', '.join(known) or 'none'}{self._failed_hint(kind, name)}")

    def _failed_hint(self, kind: str, name: str) -> str:
        """Why ``name`` may be missing: the failed plugin that tried to register it, or
        else every failed plugin (one that failed at import may have provided it)."""
        failed = self.failed
        owners = [p for p in failed if f"{kind}:{name}" in p.attempted]
        if owners:
            p = owners[0]
            return f"; plugin '{p.name}' would provide it but failed: {p.error}"
        if failed:
            return "; failed plugins that may provide it: " + "; ".join(
                f"'{p.name}' ({p.error})" for p in failed)
        return ""

    def create(self, kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
        """An instance of component ``name`` with ``params`` (validated by its Params)."""
        cls = self.get(kind, name).cls
        return cls(cls.Params(**(params or {})))

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    # -- registration -------------------------------------------------------------
    def _register(self, plugin: PluginInfo, expected_kind: str, cls: Any) -> None:
        base = KINDS[expected_kind]
        if isinstance(cls, type) and isinstance(getattr(cls, "name", None), str):
            plugin.attempted.append(f"{expected_kind}:{cls.name}")
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
        except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break genbench
            self.components = snapshot
            info.components.clear()
            info.error = contain(exc)
        return info


PLUGIN_ENV = ("GENBENCH_PLUGINS", "GENBENCH_DISABLE_PLUGINS")  # what load_registry reads


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
        except BaseException as exc:  # noqa: BLE001 - sys.exit at import included
            registry.plugins[ep.name] = PluginInfo(ep.name, version, builtin,
                                                   error=contain(exc))
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
