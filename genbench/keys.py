"""The content keys of everything the store holds, built here and nowhere else.

A key is a hash of what determines a record: a model's resolved config, seed and
component versions; a measure value's model and measure (name, version, params); a
shared quantity's model, kind, name, version and params. What a measure value
depends on *beyond* its own key (the volumes, sigma, alpha or memos it read) is not
declared but recorded while it runs (:class:`Lookup`, one per context lookup) and
stored with the value; a rerun reuses the value only while every recorded lookup
still resolves to the key it had (:func:`still_valid`), the way build systems treat
discovered dependencies.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# A recorded lookup: {"kind", "name", "version", "params", "key"} (the arguments of
# one ctx.memo/volume/sigma/alpha call, resolved, and the key they gave).
Lookup = dict[str, Any]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:20]


def model_key(config: dict[str, Any], seed: int, trainer: str,
              components: list[tuple[str, str, str]]) -> str:
    """A model: its resolved config, seed, training-loop version and the (kind, name,
    version) of every component that builds or trains it."""
    return content_key({"config": config, "seed": seed, "trainer": trainer,
                        "components": components})


def dataset_key(config: dict[str, Any], version: str) -> str:
    """A loaded dataset: its resolved section of a model config and its version."""
    return content_key({"dataset": config["dataset"], "version": version})


def measure_key(model: str, name: str, version: str, params: dict[str, Any]) -> str:
    """One measure value of one model (its dependencies are recorded, not keyed)."""
    return content_key({"model": model, "kind": "measure", "name": name, "version": version,
                        "params": params})


def shared_key(model: str, kind: str, name: str, version: str, params: dict[str, Any]) -> str:
    """A shared quantity of one model: a volume, sigma, alpha or a plugin's memo."""
    return content_key({"model": model, "kind": kind, "name": name, "version": version,
                        "params": params})


def lookup(model: str, kind: str, name: str, version: str, params: dict[str, Any]) -> Lookup:
    return {"kind": kind, "name": name, "version": version, "params": params,
            "key": shared_key(model, kind, name, version, params)}


def volume_lookup(model: str, estimator: str, registry: Any, settings: dict[str, Any]) -> Lookup:
    """``ctx.volume(estimator)`` as it resolves now: the estimator's version and the
    suite's params for it (defaults filled in)."""
    cls = registry.get("volume_estimator", estimator).cls
    params = cls.Params(**settings.get("volume", {}).get(estimator, {})).identity()
    return lookup(model, "volume", estimator, str(cls.version), params)


def search_lookup(model: str, name: str, params: Any) -> Lookup:
    """``ctx.sigma``/``ctx.alpha`` with resolved ``params``, under the search's current version."""
    from genbench import search_params as sp

    version = {"sigma": sp.SIGMA_VERSION, "alpha": sp.ALPHA_VERSION}[name]
    return lookup(model, "shared", name, version, params.identity())


def current(model: str, dep: Lookup, registry: Any, settings: dict[str, Any]) -> Lookup:
    """What the lookup recorded as ``dep`` resolves to today."""
    if dep["kind"] == "volume":
        return volume_lookup(model, dep["name"], registry, settings)
    if dep["kind"] == "shared" and dep["name"] in ("sigma", "alpha"):
        from genbench.search_params import AlphaParams, SigmaParams

        cls = {"sigma": SigmaParams, "alpha": AlphaParams}[dep["name"]]
        return search_lookup(model, dep["name"], cls(**dep["params"]))
    return lookup(model, dep["kind"], dep["name"], dep["version"], dep["params"])


def still_valid(model: str, deps: list[Lookup], registry: Any, settings: dict[str, Any]) -> bool:
    """True when every recorded lookup would find the same key today (a lookup that no
    longer resolves, e.g. an estimator that is gone, counts as changed)."""
    for dep in deps:
        try:
            if current(model, dep, registry, settings)["key"] != dep["key"]:
                return False
        except Exception:  # noqa: BLE001 - unresolvable today: recompute, and report it then
            return False
    return True


def suite_measures(suite: Any, registry: Any) -> list[tuple[str, dict[str, Any], str, dict]]:
    """(name, raw params, version, identity params) of each measure of the suite."""
    out = []
    for name, raw in suite.measures.items():
        cls = registry.get("measure", name).cls
        out.append((name, dict(raw), str(cls.version), cls.Params(**raw).identity()))
    return out
