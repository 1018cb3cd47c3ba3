"""core/config.py: the YAML file is the schema; overrides are checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core.config import (
    ConfigError,
    check,
    choices,
    existing_file,
    in_range,
    load_config,
    positive,
    save_config,
    validate,
    yaml_comments,
)
from core.errors import UserError

YAML = """\
# A small config for tests (not the project's configs).

# ---- keys users type often ----
input: ""            # path of the input image
save_path: ""        # output name; empty = the input file's stem
seed: 0              # random seed
device: auto         # auto | cuda | cpu
mesh: null           # optional mesh file
video: false         # write a turntable video
lr: 1e-3             # written without a dot: still a float
tags: [a, b]         # a list of strings

# ---- the algorithm ----
sir:                 # score-based iterative reconstruction
  cfg: 3.0           # classifier-free guidance scale
  steps: 15          # reconstruction steps per iteration
  # elevation range in degrees
  elev: [-30, 30]
  name: "a#b"        # a hash inside quotes is not a comment
"""

RULES = {
    "device": choices("auto", "cuda", "cpu"),
    "sir.steps": positive(),
    "sir.cfg": in_range(0.0, 20.0),
    "seed": check(lambda v: v < 1000, "be below 1000"),
}


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(YAML)
    return p


def load(cfg_file: Path, *overrides: str, **kw):
    return load_config(["--config", str(cfg_file), *overrides], **kw)


def test_defaults_and_types(cfg_file):
    cfg = load(cfg_file)
    assert cfg.seed == 0 and cfg.device == "auto" and cfg.mesh is None and cfg.video is False
    assert isinstance(cfg.lr, float) and cfg.lr == pytest.approx(1e-3)
    assert cfg.sir.cfg == 3.0 and list(cfg.sir.elev) == [-30, 30] and cfg.sir.name == "a#b"


def test_overrides_nested_and_coerced(cfg_file):
    cfg = load(
        cfg_file,
        "sir.cfg=2",
        "sir.steps=7",
        "seed=3",
        "video=true",
        "lr=5e-4",
        "sir.elev=[-5,0]",
        "tags=[x]",
        "mesh=m.obj",
        "save_path=007",
    )
    assert cfg.sir.cfg == 2.0 and isinstance(cfg.sir.cfg, float)  # int given for a float key
    assert cfg.sir.steps == 7 and cfg.seed == 3 and cfg.video is True
    assert cfg.lr == pytest.approx(5e-4)
    assert list(cfg.sir.elev) == [-5, 0] and list(cfg.tags) == ["x"]
    assert cfg.mesh == "m.obj"  # null in the file: any type
    assert cfg.save_path == "007"  # str keys keep the text as typed
    # Later overrides win.
    assert load(cfg_file, "seed=1", "seed=2").seed == 2


def test_unknown_key_names_key_file_and_suggestion(cfg_file):
    with pytest.raises(ConfigError) as e:
        load(cfg_file, "sir.cgf=2")
    msg = str(e.value)
    assert "sir.cgf" in msg and str(cfg_file) in msg and "did you mean 'sir.cfg'" in msg
    # A nested key given without its group.
    with pytest.raises(ConfigError, match=r"unknown config key 'steps'.*did you mean 'sir.steps'"):
        load(cfg_file, "steps=3")
    with pytest.raises(ConfigError, match="no_such_key"):
        load(cfg_file, "no_such_key=1")
    assert issubclass(ConfigError, UserError)


@pytest.mark.parametrize(
    "override, expect",
    [
        ("seed=2.5", "expects an integer"),
        ("sir.cfg=abc", "expects a number"),
        ("video=2", "expects true or false"),
        ("sir.elev=3", "expects a list"),
        ("sir.elev=[a,1]", "expects an integer"),
        ("sir=3", "is a group of keys"),
        ("seed.x=1", "is not a group"),
        ("device=null", "cannot be null"),
    ],
)
def test_wrong_type_names_key_and_file(cfg_file, override, expect):
    with pytest.raises(ConfigError) as e:
        load(cfg_file, override)
    key = override.split("=")[0].split(".x")[0]
    assert expect in str(e.value) and key in str(e.value) and str(cfg_file) in str(e.value)


def test_bad_command_line(cfg_file, tmp_path):
    with pytest.raises(ConfigError, match="unexpected argument '--seed'"):
        load(cfg_file, "--seed", "3")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        load_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="--config FILE"):
        load_config(["seed=1"])
    # defaults_path stands in for --config.
    assert load_config(["seed=4"], defaults_path=cfg_file).seed == 4


@pytest.mark.parametrize(
    "value, stem", [("cat.png", "cat"), ("x/cat_rgba.png", "cat_rgba"), ("../a/b.c/dog.jpg", "dog")]
)
def test_save_path_defaults_to_input_stem(cfg_file, value, stem):
    assert load(cfg_file, f"input={value}").save_path == stem
    assert load(cfg_file, f"input={value}", "save_path=mine").save_path == "mine"


def test_required_key(cfg_file):
    with pytest.raises(ConfigError, match="missing required config key 'input'"):
        load(cfg_file, required=["input"])
    assert load(cfg_file, "input=a.png", required=["input"]).input == "a.png"


def test_rules(cfg_file):
    load(cfg_file, rules=RULES)
    with pytest.raises(ConfigError, match=r"'device'.*must be one of auto, cuda, cpu.*did you mean 'cuda'"):
        load(cfg_file, "device=cuda0", rules=RULES)
    with pytest.raises(ConfigError, match=r"'sir.steps'.*must be > 0"):
        load(cfg_file, "sir.steps=0", rules=RULES)
    with pytest.raises(ConfigError, match=r"'sir.cfg'.*must be in \[0.0, 20.0\]"):
        load(cfg_file, "sir.cfg=30", rules=RULES)
    with pytest.raises(ConfigError, match="must be below 1000"):
        load(cfg_file, "seed=5000", rules=RULES)
    with pytest.raises(ConfigError, match=r"'input'.*must name an existing file, got 'missing.png'"):
        load(cfg_file, "input=missing.png", rules={"input": existing_file()})
    assert load(cfg_file, f"input={cfg_file}", rules={"input": existing_file()}).save_path == "small"
    # Shorthands: a tuple of choices, a (predicate, text) pair; absent keys and nulls are skipped.
    cfg = OmegaConf.create({"a": "x", "b": 2, "c": None})
    validate(
        cfg, {"a": ("x", "y"), "b": (lambda v: v % 2 == 0, "be even"), "c": positive(), "zz": positive()}
    )
    with pytest.raises(ConfigError, match="'b'.*must be odd"):
        validate(cfg, {"b": (lambda v: v % 2 == 1, "be odd")})


def test_struct_mode_catches_typos_in_code(cfg_file):
    cfg = load(cfg_file)
    with pytest.raises(Exception):  # noqa: B017 - omegaconf's ConfigAttributeError
        _ = cfg.sedd


def test_help_lists_keys_with_comments(cfg_file, capsys):
    with pytest.raises(SystemExit) as e:
        load(cfg_file, "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    for key, comment in [
        ("input", "path of the input image"),
        ("sir.cfg", "classifier-free guidance scale"),
        ("sir.elev", "elevation range in degrees"),  # comment on the line above
        ("sir.name", "a hash inside quotes is not a comment"),
    ]:
        line = next(line for line in out.splitlines() if line.strip().startswith(key + " "))
        assert comment in line
    comments = yaml_comments(cfg_file)
    assert comments["sir"] == "score-based iterative reconstruction"
    assert "input" in comments and "----" not in comments.get("input", "")


def test_base_file_inheritance(cfg_file, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: {cfg_file.name}\ndevice: cpu   # cpu only\nsir:\n  steps: 3\n")
    cfg = load_config(["--config", str(child), "sir.cfg=1"])
    assert cfg.device == "cpu" and cfg.sir.steps == 3 and cfg.sir.cfg == 1.0 and cfg.seed == 0
    bad = tmp_path / "bad_child.yaml"
    bad.write_text(f"_base_: {cfg_file.name}\nsir:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"sir.stepz.*bad_child.yaml.*did you mean 'sir.steps'"):
        load_config(["--config", str(bad)])
    wrong = tmp_path / "wrong_child.yaml"
    wrong.write_text(f"_base_: {cfg_file.name}\nseed: abc\n")
    with pytest.raises(ConfigError, match=r"'seed'.*wrong_child.yaml.*expects an integer"):
        load_config(["--config", str(wrong)])


def test_save_config_roundtrip(cfg_file, tmp_path):
    cfg = load(cfg_file, "input=cat.png", "sir.cfg=2.5")
    out = save_config(cfg, tmp_path / "out" / "cat_config.yaml")
    again = load_config(["--config", str(out)])
    assert again.sir.cfg == 2.5 and again.save_path == "cat"
    assert [p.name for p in out.parent.iterdir()] == ["cat_config.yaml"]  # no temp files left


def test_project_configs_load():
    """The shipped configs parse, inherit and accept a typical override (at least one)."""
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, f"no configs in {root}"
    for f in files:
        cfg = load_config(["--config", str(f), "input=cat.png", "seed=1"])
        assert cfg.save_path == "cat" and cfg.seed == 1
