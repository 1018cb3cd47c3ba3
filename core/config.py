"""Configuration: a YAML file is both the defaults and the schema; ``key=value`` overrides it.

``load_config(["--config", "configs/image.yaml", "input=cat.png", "sir.cfg=2"])`` returns an
OmegaConf ``DictConfig``. Every key the file defines may be overridden (nested keys with dots); a
key the file does not define, or a value of another type than the file's, is a :class:`ConfigError`
that names the key and the file and suggests the closest key. Type rules, by the file's value:

* ``int``: an integer. ``float``: any number (ints become floats). ``bool``: true/false (also
  yes/no/on/off/1/0). ``str``: the text as typed (``save_path=007`` stays ``"007"``).
* ``list``: a YAML flow list ``[a, b]``; its items must have the type of the file's first item.
* ``null`` in the file: the key is optional and takes any value; ``key=null`` is allowed only there.

Value checks beyond types (choices, ranges) are declarative rules, see :func:`validate`.
``-h``/``--help`` prints the keys with the comments the YAML file has for them.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from core.errors import UserError
from core.fileio import atomic_write_text
from core.names import safe_stem

__all__ = [
    "ConfigError",
    "Rule",
    "at_least",
    "at_most",
    "check",
    "check_finite",
    "choices",
    "config_help",
    "existing_file",
    "in_range",
    "load_config",
    "non_negative",
    "parse_argv",
    "positive",
    "save_config",
    "validate",
    "yaml_comments",
]


class ConfigError(UserError):
    """A configuration problem: unknown key, wrong type, bad value, unreadable config file."""


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


@dataclass
class ParsedArgs:
    """What the command line says: the config file, the ``key=value`` overrides, whether to show help."""

    config: str | None
    overrides: list[tuple[str, str]]
    help: bool


def parse_argv(argv: Sequence[str]) -> ParsedArgs:
    """Split ``[--config FILE] [-h] key=value ...`` into its parts (values stay raw text)."""
    config: str | None = None
    overrides: list[tuple[str, str]] = []
    want_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            want_help = True
        elif arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file: --config configs/image.yaml")
            config = argv[i + 1]
            i += 1
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            key = key.strip()
            if not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", key):
                raise ConfigError(f"bad override {arg!r}: the key must look like name or group.name")
            overrides.append((key, value))
        else:
            raise ConfigError(
                f"unexpected argument {arg!r}: expected --config FILE or key=value (no spaces around '=')"
            )
        i += 1
    return ParsedArgs(config, overrides, want_help)


# ----------------------------------------------------------------------------------------------
# Schema = the YAML file
# ----------------------------------------------------------------------------------------------


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf keys of a nested mapping as ``{"a.b": value}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.update(_flatten(v, key))
            else:
                out[key] = v
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "group"
    return type(value).__name__


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``1e-3`` (no dot) as a float, as OmegaConf does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _load_yaml(path: Path) -> dict[str, Any]:
    """The config file as plain Python containers (interpolations left as text)."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a folder, not a YAML file: {path}")
    try:
        data = _yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot parse config file {path}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value lines")
    return data


BASE_KEY = "_base_"


def _load_schema(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The config file merged over its ``_base_`` file (a path relative to it), checked key by key.

    A derived file may only set keys its base defines, with the base's types, so the base stays
    the one schema (and the one place keys are documented).
    """
    data = _load_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{BASE_KEY} in {path} must be the path of another config file")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{BASE_KEY} cycle: {path} includes itself through {base}")
    merged = _load_schema(base_path, (*_seen, path.resolve()))
    source = f"{path} (its {BASE_KEY} {base} defines the keys)"
    all_keys = list(_flatten(merged))

    def merge(node: dict, new: Mapping, prefix: str) -> None:
        for k, v in new.items():
            key = f"{prefix}{k}"
            if k not in node:
                raise ConfigError(f"unknown config key '{key}' in {source}{_suggest(key, all_keys)}")
            if isinstance(node[k], dict) and isinstance(v, Mapping):
                merge(node[k], v, f"{key}.")
            else:
                node[k] = _coerce(key, v, node[k], source, False)

    merge(merged, data, "")
    return merged


def _suggest(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known key, or ''."""
    known = list(known)
    leaf = key.rsplit(".", 1)[-1]
    # A key given without its group (cfg= for sir.cfg) is the commonest slip: match on leaf names first.
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf and k != key]
    matches = same_leaf or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not matches:
        leaves = {k.rsplit(".", 1)[-1]: k for k in known}
        close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.7)
        matches = [leaves[c] for c in close]
    return f" (did you mean '{matches[0]}'?)" if matches else ""


_BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}
_NULL_WORDS = {"null", "~", "none"}


def _unquote(raw: str) -> str:
    s = raw.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return raw


def _coerce(key: str, raw: Any, schema: Any, source: str, from_text: bool) -> Any:
    """Convert an override (raw text, or an already parsed YAML item) to the type of ``schema``."""

    def fail(expect: str) -> ConfigError:
        return ConfigError(f"config key '{key}' in {source} expects {expect}, got {raw!r}")

    text = raw.strip() if from_text else None
    if from_text and "${" in raw:
        return raw  # an OmegaConf interpolation: resolved (and so checked) later by OmegaConf
    if schema is None:  # optional key of any type
        if from_text:
            if text.lower() in _NULL_WORDS or text == "":
                return None
            try:
                return _yaml(text)
            except yaml.YAMLError:
                return raw
        return raw
    if from_text and text.lower() in _NULL_WORDS:
        raise ConfigError(f"config key '{key}' in {source} cannot be null (it is {_type_name(schema)} there)")
    if not from_text and raw is None:
        raise fail(_type_name(schema))
    if isinstance(schema, bool):
        if from_text:
            if text.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[text.lower()]
            raise fail("true or false")
        if isinstance(raw, bool):
            return raw
        raise fail("true or false")
    if isinstance(schema, int):
        if from_text:
            try:
                return int(text)
            except ValueError:
                raise fail("an integer") from None
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise fail("an integer")
    if isinstance(schema, float):
        if from_text:
            try:
                return float(text)
            except ValueError:
                raise fail("a number") from None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(raw)
            except ValueError:
                pass
        raise fail("a number")
    if isinstance(schema, str):
        if from_text:
            return _unquote(raw)
        if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            return str(raw)
        raise fail("a string")
    if isinstance(schema, list):
        value = raw
        if from_text:
            try:
                value = _yaml(text)
            except yaml.YAMLError:
                raise fail("a list like [1, 2]") from None
        if not isinstance(value, list):
            raise fail("a list like [1, 2]")
        if schema:
            item_schema = schema[0]
            return [_coerce(f"{key}[{i}]", v, item_schema, source, False) for i, v in enumerate(value)]
        return value
    if isinstance(schema, Mapping):
        value = raw
        if from_text:
            try:
                value = _yaml(text)
            except yaml.YAMLError:
                value = None
        if not isinstance(value, Mapping):
            keys = ", ".join(f"{key}.{k}" for k in list(schema)[:4])
            raise ConfigError(
                f"config key '{key}' in {source} is a group of keys; set one of them, e.g. {keys}"
            )
        return {k: _coerce_child(key, k, v, schema, source) for k, v in value.items()}
    return raw


def _coerce_child(group: str, name: Any, value: Any, schema: Mapping, source: str) -> Any:
    key = f"{group}.{name}"
    if name not in schema:
        raise ConfigError(f"unknown config key '{key}' in {source}{_suggest(key, _flatten({group: schema}))}")
    return _coerce(key, value, schema[name], source, False)


def _apply_override(
    data: dict, key: str, raw: str, source: str, all_keys: list[str], interpolated: dict[str, Any]
) -> None:
    """Check one ``key=raw`` against the schema ``data`` and write its typed value into it.

    A value with an OmegaConf interpolation (``${...}``) cannot be typed yet: it is stored as
    text and its key and schema go into ``interpolated``, to be checked once resolved.
    """
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if not isinstance(node, dict):
            parent = ".".join(parts[:depth])
            raise ConfigError(f"config key '{parent}' in {source} is not a group, so '{key}' does not exist")
        if part not in node:
            raise ConfigError(f"unknown config key '{key}' in {source}{_suggest(key, all_keys)}")
        if depth == len(parts) - 1:
            schema = node[part]
            value = _coerce(here, raw, schema, source, True)
            if isinstance(value, str) and "${" in raw:
                interpolated[here] = schema
            if isinstance(schema, dict) and isinstance(value, dict):
                node[part] = _deep_merge(schema, value)
            else:
                node[part] = value
        else:
            node = node[part]


def _deep_merge(base: dict, new: Mapping) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


# ----------------------------------------------------------------------------------------------
# Help: keys and their YAML comments
# ----------------------------------------------------------------------------------------------

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w\-]*)\s*:(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str]:
    """Split ``value  # comment`` at the first ``#`` outside quotes."""
    quote = ""
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def yaml_comments(path: str | Path) -> dict[str, str]:
    """``{"group.key": comment}`` from a block-style YAML file: the key's inline comment, else the
    comment lines right above it (a blank line detaches a comment block)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the open groups
    pending: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        m = _KEY_LINE.match(line)
        if not m or stripped.startswith("-"):
            pending = []
            continue
        indent = len(m["indent"].expandtabs())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [m["key"]])
        _, inline = _split_comment(m["rest"])
        # Section banners ("# ---- cameras ----") lose their rulers.
        above = (p.strip("-=*# ") for p in pending)
        text = inline or " ".join(p for p in above if p)
        if text:
            comments[dotted] = text
        pending = []
        stack.append((indent, m["key"]))
    return comments


def _all_comments(path: Path) -> dict[str, str]:
    """Comments of a config file and of its ``_base_`` chain (the derived file's win)."""
    try:
        base = (_load_yaml(path) or {}).get(BASE_KEY)
    except ConfigError:
        base = None
    comments = _all_comments((path.parent / base).resolve()) if isinstance(base, str) and base else {}
    comments.update({k: v for k, v in yaml_comments(path).items() if k != BASE_KEY})
    return comments


def config_help(path: str | Path, prog: str = "main.py") -> str:
    """Usage text plus every key of the config file with its type, default and comment."""
    lines = [
        f"usage: {prog} --config FILE [key=value ...]",
        "",
        "Settings come from the YAML file; override any of them with key=value (nested keys with dots,",
        "lists as [a,b]). Keys of " + str(path) + ":",
        "",
    ]
    data = _load_schema(Path(path))
    comments = _all_comments(Path(path))
    flat = _flatten(data)
    groups = {k for k in comments if k not in flat}
    width = min(max((len(k) for k in flat), default=10), 34)
    last_group = None
    for key, value in flat.items():
        group = key.rsplit(".", 1)[0] if "." in key else None
        if group != last_group and group is not None:
            note = comments.get(group, "") if group in groups else ""
            lines.append(f"  [{group}]" + (f"  {note}" if note else ""))
        last_group = group
        shown = "''" if value == "" else yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
        shown = shown.removesuffix("...").strip()
        if len(shown) > 24:
            shown = shown[:21] + "..."
        lines.append(
            f"  {key:<{width}}  {_type_name(value):<5}  {shown:<12}  {comments.get(key, '')}".rstrip()
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Value rules
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A value check: ``ok(value, *needed)`` must be true, else the error says ``must ...``.

    ``needs`` names other config keys whose values are passed to ``ok`` after the value (cross-key
    rules); ``must`` may use ``{0}``, ``{1}``... for those values. The rule is skipped when a needed
    key is absent or null.
    """

    ok: Callable[..., bool]
    must: str
    options: tuple = ()  # for choices: offered as a close-match suggestion
    needs: tuple[str, ...] = ()


def _items(v: Any) -> list:
    """A list value's items, or ``[v]``: numeric rules apply to every item of a list."""
    return list(v) if isinstance(v, (list, tuple, ListConfig)) else [v]


def choices(*values: Any) -> Rule:
    """The value must be one of ``values``."""
    return Rule(lambda v: v in values, "be one of " + ", ".join(map(str, values)), tuple(values))


def positive() -> Rule:
    """The value (or every item of a list) must be > 0."""
    return Rule(lambda v: all(x > 0 for x in _items(v)), "be > 0")


def non_negative() -> Rule:
    """The value (or every item of a list) must be >= 0."""
    return Rule(lambda v: all(x >= 0 for x in _items(v)), "be >= 0")


def in_range(lo: float, hi: float) -> Rule:
    """``lo <= value <= hi`` (every item of a list); ints and floats alike, e.g. ``in_range(1, 4096)``."""
    return Rule(lambda v: all(lo <= x <= hi for x in _items(v)), f"be in [{lo}, {hi}]")


def _bound(bound: float | str, op: Callable[[Any, Any], bool], sign: str) -> Rule:
    if isinstance(bound, str):  # another key: a cross-key rule
        return Rule(
            lambda v, b: all(op(x, b) for x in _items(v)), f"be {sign} {bound} ({{0}})", needs=(bound,)
        )
    return Rule(lambda v: all(op(x, bound) for x in _items(v)), f"be {sign} {bound}")


def at_least(bound: float | str) -> Rule:
    """``value >= bound``; ``bound`` is a number or another key (``at_least("sir.steps_min")``)."""
    return _bound(bound, lambda x, b: x >= b, ">=")


def at_most(bound: float | str) -> Rule:
    """``value <= bound``; ``bound`` is a number or another key (``at_most("sir.steps_max")``)."""
    return _bound(bound, lambda x, b: x <= b, "<=")


def existing_file() -> Rule:
    """The value (a path) must name an existing file; an empty string passes (use ``required``)."""
    return Rule(lambda v: v == "" or Path(str(v)).is_file(), "name an existing file")


def check(predicate: Callable[..., bool], must: str, needs: Sequence[str] = ()) -> Rule:
    """Any predicate; ``must`` completes the sentence 'config key X must ...'.

    With ``needs=("a.b", ...)`` the predicate is called as ``predicate(value, a_b, ...)`` and
    ``must`` may show those values as ``{0}``, ``{1}``: e.g.
    ``check(lambda hi, lo: hi >= lo, "be >= sir.steps_min ({0})", needs=["sir.steps_min"])``.
    """
    return Rule(predicate, must, needs=tuple(needs))


RuleLike = Rule | Sequence[Rule] | tuple | set | frozenset


def _as_rules(spec: Any) -> list[Rule]:
    if isinstance(spec, Rule):
        return [spec]
    if isinstance(spec, (set, frozenset)):
        return [choices(*sorted(spec, key=str))]
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, Rule) for s in spec):
        return list(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and callable(spec[0]) and isinstance(spec[1], str):
        return [Rule(spec[0], spec[1])]
    if isinstance(spec, (list, tuple)):
        return [choices(*spec)]
    raise TypeError(f"not a config rule: {spec!r}")


def validate(
    cfg: DictConfig | Mapping, rules: Mapping[str, RuleLike], source: str | Path = "the config"
) -> None:
    """Check values against declarative ``rules``; raise :class:`ConfigError` on the first violation.

    ``rules`` maps a dotted key to a :class:`Rule` (``choices(...)``, ``positive()``,
    ``in_range(a, b)``, ``at_least(n)``, ``at_most(n)``, ``check(fn, "be ...")``; cross-key:
    ``at_least("other.key")``, ``check(fn, "be ... {0}", needs=["other.key"])``), a list of Rules, a tuple/list/set of allowed
    values (shorthand for ``choices``) or a ``(predicate, "be ...")`` pair. Keys absent from the
    config and null values are skipped (null means "not set"), so one rule table serves all configs.
    """
    flat = None if isinstance(cfg, DictConfig) else _flatten(cfg)

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key, default=None) if flat is None else flat.get(key)

    for key, spec in rules.items():
        value = get(key)
        if value is None:
            continue
        for rule in _as_rules(spec):
            needed = [get(k) for k in rule.needs]
            if any(n is None for n in needed):
                continue  # a cross-key rule whose other key is absent or unset
            try:
                ok = bool(rule.ok(value, *needed))
            except TypeError:
                ok = False
            if not ok:
                hint = ""
                if rule.options and isinstance(value, str):
                    close = difflib.get_close_matches(value, [str(o) for o in rule.options], n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                shown = (
                    OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
                )
                must = rule.must.format(*needed) if rule.needs else rule.must
                raise ConfigError(f"config key '{key}' in {source} must {must}, got {shown!r}{hint}")


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def load_config(
    argv: Sequence[str] | None = None,
    defaults_path: str | Path | None = None,
    *,
    rules: Mapping[str, RuleLike] | None = None,
    required: Sequence[str] = (),
    prog: str | None = None,
    struct: bool = True,
) -> DictConfig:
    """Parse ``[--config FILE] [key=value ...]`` into a checked OmegaConf config.

    ``argv`` excludes the program name (default ``sys.argv[1:]``); ``defaults_path`` is used when no
    ``--config`` is given. ``-h``/``--help`` prints :func:`config_help` and exits 0. ``required``
    keys must be non-empty after overrides (else :class:`ConfigError` naming the key). An empty
    ``save_path`` becomes the stem of ``input`` (``x/cat_rgba.png`` -> ``cat_rgba``). ``rules`` go
    to :func:`validate`. With ``struct`` (default) reading or writing a key the file lacks raises,
    so typos in code fail loudly; add keys inside ``omegaconf.open_dict(cfg)``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).name or "main.py"
    args = parse_argv(argv)
    path = args.config if args.config is not None else defaults_path
    if args.help:
        if path is None:
            print(f"usage: {prog} --config FILE [key=value ...]\n\nPass --config FILE to list its keys.")
        else:
            print(config_help(path, prog))
        raise SystemExit(0)
    if path is None:
        raise ConfigError(
            f"no config file: pass --config FILE, e.g. {prog} --config configs/image.yaml input=cat.png"
        )
    path = Path(path)
    source = str(path)
    data = _load_schema(path)
    all_keys = list(_flatten(data))
    interpolated: dict[str, Any] = {}
    for key, raw in args.overrides:
        _apply_override(data, key, raw, source, all_keys, interpolated)

    cfg = OmegaConf.create(data)
    _resolve(cfg, interpolated, source)
    check_finite(cfg, source)
    if "save_path" in cfg and not cfg.get("save_path") and cfg.get("input"):
        # A derived name is made safe (a file called '..png' or with a newline still runs).
        cfg.save_path = safe_stem(Path(str(cfg.input).rstrip("/\\")).stem)
    for key in required:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(
                f"missing required config key '{key}': pass {key}=... "
                f"(e.g. {key}=path/to/image.png; see {prog} --config {source} --help)"
            )
    if rules:
        validate(cfg, rules, source)
    OmegaConf.set_struct(cfg, struct)
    return cfg


def _resolve(cfg: DictConfig, interpolated: Mapping[str, Any], source: str) -> None:
    """Resolve OmegaConf interpolations in place, then type-check the overrides that used them.

    A resolved value that still holds ``${`` (an environment variable or escaped text that would be
    read as a new interpolation) is refused, so text from outside cannot inject interpolations.
    """
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise ConfigError(f"cannot resolve interpolations in {source}: {str(e).splitlines()[0]}") from None
    for key, schema in interpolated.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        where = f"{source} (after interpolation)"
        if isinstance(value, str):
            if "${" in value:
                raise ConfigError(
                    f"config key '{key}' in {source}: its interpolation resolves to text with '${{'"
                )
            typed = _coerce(key, value, schema, where, True)
        else:
            typed = _coerce(key, value, schema, where, False)
        OmegaConf.update(cfg, key, typed, merge=False)
    for key, value in _leaves(cfg):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(
                f"config key '{key}' in {source} still holds '${{' after resolving interpolations"
            )


def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf, list items as ``key[i]``."""
    if isinstance(node, (DictConfig, Mapping)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for k, v in items:
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def check_finite(cfg: DictConfig | Mapping, source: str | Path = "the config") -> None:
    """Refuse NaN and infinite numbers in every key (and list item): :class:`ConfigError` naming it."""
    for key, value in _leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' in {source} must be a finite number, got {value}")


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML atomically (temp file + rename); returns the path."""
    return atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
