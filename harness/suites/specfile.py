"""What suite and sweep files share: reading the TOML, and one rule (one message) per common key.

    name = "my_suite"             # a plain folder name: OUT/<name>/
    seeds = [0, 1, 2]             # distinct whole numbers >= 0
    plugins = ["my_method.py"]    # Python files that register methods, relative to this file
    [base]                        # run-config keys (dotted, or nested tables)

A plugin file registers selection rules, bias controllers or presets with the decorators of
`harness.routing` when it is imported; it is imported once per process, before any run config
is resolved, so every worker of `--jobs` and every rank of `torchrun` (each reads the same file)
knows the same methods. MOE_HARNESS_PLUGINS (paths separated by ':') does the same for commands
that read no suite file, such as `moe-harness list`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

from harness._compat import tomllib

NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
PLUGINS_ENV = "MOE_HARNESS_PLUGINS"


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}; quoted dotted keys pass through."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_keys(spec: dict[str, Any], allowed: set[str], source: Path, kind: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"{source}: unknown {kind} key(s) {unknown}; allowed: {sorted(allowed)}")


def name_of(spec: dict[str, Any], source: Path) -> str:
    name = spec.get("name", source.stem)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{source}: name = {name!r} must be a plain folder name: letters, digits, '.', '_' or '-', "
                         "no '/' (it names the folder OUT/<name>/)")
    return name


def seeds_of(spec: dict[str, Any], source: Path) -> list[int]:
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ValueError(f"{source}: seeds = {seeds!r} must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{source}: seeds = {seeds!r} lists a seed twice")
    if min(seeds) < 0:
        raise ValueError(f"{source}: seeds = {seeds!r}: seed {min(seeds)} must be a whole number >= 0")
    return seeds


def table_of(spec: dict[str, Any], key: str, source: Path) -> dict[str, Any]:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {key} = {value!r} must be a table of run-config keys ([{key}])")
    return flatten(value)


def no_seed_in(tables: dict[str, dict[str, Any]], source: Path) -> None:
    """A seed set anywhere but `seeds` would be overwritten by each seed of the list, silently."""
    for where, table in tables.items():
        if "seed" in table:
            raise ValueError(f"{source}: {where} sets seed = {table['seed']!r}, but the runs take their seeds "
                             "from the top-level `seeds` list; use seeds = [...] instead")


def load_plugins(spec: dict[str, Any], source: Path) -> list[Path]:
    """Import the `plugins` files a suite or sweep names (relative to it); each file once per process."""
    plugins = spec.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ValueError(f"{source}: plugins = {plugins!r} must be a list of Python file paths")
    paths = [(source.parent / p).resolve() for p in plugins]
    for path in paths:
        import_plugin(path, f"{source}: plugins")
    return paths


def load_env_plugins() -> list[Path]:
    paths = [Path(p).resolve() for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]
    for path in paths:
        import_plugin(path, PLUGINS_ENV)
    return paths


def import_plugin(path: Path, where: str) -> None:
    if path.suffix != ".py" or not path.is_file():
        raise ValueError(f"{where}: {str(path)!r} is not a Python file")
    module = f"moe_harness_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if module in sys.modules:  # NOTE: a second import would register its methods twice
        return
    spec = importlib.util.spec_from_file_location(module, path)
    sys.modules[module] = loaded = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(loaded)
    except ValueError as err:  # a duplicate name, a bad declaration: the plugin's own message, with its file
        del sys.modules[module]
        raise ValueError(f"{where}: {path}: {err}" if str(path) not in str(err) else f"{where}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a broken plugin is bad input, not a harness bug
        del sys.modules[module]
        raise ValueError(f"{where}: {path} could not be imported ({type(err).__name__}: {err})") from err
