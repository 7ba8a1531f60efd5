"""Check dashboard JSON against grafana-foundation-sdk's own models.

The SDK's decoder (``Dashboard.from_json``) builds its typed models from JSON but is
lenient by itself: it skips keys it does not know and does not check types. So a
dashboard passes here only if

1. the decoder accepts it (no exception: a ``null`` where an object belongs, a
   string where a list belongs ... fail here);
2. every decoded field holds what the model declares (type hints of the generated
   classes: ``int``, ``str``, enums, nested models, lists, unions);
3. every panel type is a panel plugin the SDK knows, and every query decodes to a
   known data source's query model (not the SDK's catch-all ``UnknownDataquery``);
4. encoding the decoded model gives back everything that went in: a key the models
   do not know, or a value they change, is reported (this is how grafanalib's
   legacy ``null`` fields show up).

``python grafana/validate.py [FILE ...]`` checks the given files (default: the
committed dashboards) and exits 1 on any problem.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog import plugins as cog_plugins
from grafana_foundation_sdk.cog import runtime as cog_runtime
from grafana_foundation_sdk.cog import variants as cog_variants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"


@functools.cache
def _register() -> None:
    cog_plugins.register_default_plugins()


def _is_model(cls: Any) -> bool:
    return (isinstance(cls, type) and cls.__module__.startswith("grafana_foundation_sdk.")
            and hasattr(cls, "from_json") and hasattr(cls, "to_json"))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _check(value: Any, hint: Any, path: str) -> list[str]:
    """Problems of ``value`` against the type ``hint`` (empty when it fits)."""
    if hint is Any or hint is object:
        # Panel options and field config are typed ``object``; the decoder fills them
        # with the panel plugin's own models: check those too.
        if _is_model(type(value)) or isinstance(value, cog_variants.Dataquery):
            return _check(value, type(value), path)
        return []
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(hint)):
            return []
        # A decoded model picks its arm; otherwise the first arm that fits, or the
        # problems against the first arm.
        for arm in arms:
            if isinstance(arm, type) and _is_model(arm) and isinstance(value, arm):
                return _check(value, arm, path)
        results = [_check(value, arm, path) for arm in arms]
        if any(not r for r in results):
            return []
        return results[0]
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        return [] if value in allowed else [f"{path}: {_show(value)} not one of {allowed}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {_show(value)}"]
        (item,) = typing.get_args(hint) or (Any,)
        return [p for i, v in enumerate(value) for p in _check(v, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {_show(value)}"]
        _, item = typing.get_args(hint) or (Any, Any)
        return [p for k, v in value.items() for p in _check(v, item, f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        fits = isinstance(value, hint) or value in {m.value for m in hint}
        if fits and not isinstance(value, bool):
            return []
        return [f"{path}: {_show(value)} is not a {hint.__name__} "
                f"({', '.join(repr(m.value) for m in hint)})"]
    if hint is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected bool, got {_show(value)}"]
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected int, got {_show(value)}"]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected number, got {_show(value)}"]
    if hint is str:
        return [] if isinstance(value, str) else [f"{path}: expected string, got {_show(value)}"]
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null, got {_show(value)}"]
    if isinstance(hint, type) and issubclass(hint, cog_variants.Dataquery):
        if isinstance(value, cog_runtime.UnknownDataquery):
            return [f"{path}: query of an unknown data source type: {_show(value.data)}"]
        if not isinstance(value, hint):
            return [f"{path}: expected a query, got {_show(value)}"]
        return _check_model(value, path)
    if _is_model(hint):
        if isinstance(value, dict):  # some fields are left raw by the decoder
            try:
                value = hint.from_json(value)
            except Exception as exc:  # any decoder failure is the finding
                return [f"{path}: {hint.__name__} decoder failed: {exc!r}"]
        if not isinstance(value, hint):
            return [f"{path}: expected {hint.__name__}, got {_show(value)}"]
        return _check_model(value, path)
    return []  # a type the models do not constrain further


def _check_model(obj: Any, path: str) -> list[str]:
    out = []
    for name, hint in _hints(type(obj)).items():
        if hasattr(obj, name):
            out += _check(getattr(obj, name), hint, f"{path}.{name}")
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, cls=JSONEncoder, default=repr)
    return f"{type(value).__name__} {text[:60]}"


def _lost(given: Any, encoded: Any, path: str) -> list[str]:
    """What of ``given`` does not come back in ``encoded`` (defaults added are fine)."""
    if isinstance(given, dict):
        if not isinstance(encoded, dict):
            return [f"{path}: became {_show(encoded)}"]
        out = []
        for key, value in given.items():
            if key not in encoded:
                out.append(f"{path}.{key}: not kept by the SDK's model "
                           "(unknown field, or null)")
            else:
                out += _lost(value, encoded[key], f"{path}.{key}")
        return out
    if isinstance(given, list):
        if not isinstance(encoded, list) or len(encoded) != len(given):
            return [f"{path}: list became {_show(encoded)}"]
        return [p for i, (a, b) in enumerate(zip(given, encoded, strict=True))
                for p in _lost(a, b, f"{path}[{i}]")]
    if given != encoded or type(given) is bool is not type(encoded):
        return [f"{path}: {_show(given)} came back as {_show(encoded)}"]
    return []


def problems(data: Mapping[str, Any]) -> list[str]:
    """Everything the SDK's models reject in one dashboard's JSON (empty: valid)."""
    _register()
    if not isinstance(data, Mapping):
        return [f"dashboard: expected an object, got {_show(data)}"]
    try:
        model = dm.Dashboard.from_json(dict(data))
    except Exception as exc:  # any decoder failure is the finding
        return [f"dashboard: the SDK's decoder failed: {exc!r}"]
    out = _check_model(model, "dashboard")
    known = cog_runtime.Runtime().panelcfg_variants
    for i, panel in enumerate(model.panels or []):
        if isinstance(panel, dm.Panel) and panel.type_val not in known:
            out.append(f"dashboard.panels[{i}]: unknown panel type {panel.type_val!r}")
    encoded = json.loads(json.dumps(model, cls=JSONEncoder))
    out += _lost(dict(data), encoded, "dashboard")
    return out


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    paths = paths or sorted(DASHBOARD_DIR.glob("*.json"))
    bad = 0
    for path in paths:
        found = problems(json.loads(path.read_text(encoding="utf-8")))
        bad += bool(found)
        for problem in found:
            print(f"{path}: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
