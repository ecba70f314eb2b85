"""What a component takes: its params (name, type, default, description) from its pydantic
``Params`` model, for ``genbench describe NAME`` and ``genbench plugins --params NAME``."""

from __future__ import annotations

from typing import Any

__all__ = ["describe_component"]


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def describe_component(ref: str, registry: Any = None) -> dict[str, Any]:
    """``ref`` is ``NAME`` or ``KIND:NAME``; a name two kinds share must say its kind."""
    from genbench.plugins import KINDS, PluginError, get_registry

    registry = registry or get_registry()
    kind, sep, name = ref.partition(":")
    if not sep:
        kind, name = "", ref
    elif kind not in KINDS:
        raise PluginError(f"NAME: unknown kind '{kind}'; kinds: {', '.join(KINDS)}")
    kinds = [kind] if kind else [k for k in KINDS if name in registry.components[k]]
    if not kinds:
        every = sorted(f"{k}:{n}" for k in KINDS for n in registry.components[k])
        import difflib

        close = difflib.get_close_matches(name, [e.split(":", 1)[1] for e in every], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PluginError(f"NAME: no component '{name}'{hint}; `genbench plugins` lists them")
    if len(kinds) > 1:
        raise PluginError(f"NAME: '{name}' is a {' and a '.join(kinds)}; say which, "
                          f"e.g. {kinds[0]}:{name}")
    entry = registry.get(kinds[0], name)
    params = []
    for field_name, f in entry.cls.Params.model_fields.items():
        required = f.is_required()
        params.append({"name": field_name, "type": _type_name(f.annotation), "required": required,
                       "default": None if required else f.get_default(call_default_factory=True),
                       "description": f.description or ""})
    return {"kind": entry.cls.kind, "name": entry.cls.name, "version": str(entry.cls.version),
            "plugin": entry.plugin, "doc": entry.cls.describe(), "params": params}
