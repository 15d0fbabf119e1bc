"""Recipe parsing: discriminated union on `kind`, refused extras, errors naming file and field, round trips."""
from __future__ import annotations

import json

import pytest
import yaml

from packager.compress.base import METHODS
from packager.compress.recipe import (
    ARGS_BY_KIND,
    ARGS_CLASSES,
    Recipe,
    builtin_recipes,
    dump_recipe,
    known_kinds,
    load_recipe,
    parse_recipe,
)
from packager.errors import ConfigError

EXPECTED_BUILTINS = {"w8a8-int8", "gptq-w4a16", "gptq-w8a16", "awq-w4a16", "fp8", "prune-depth", "prune-distill-w8a8"}


def test_every_args_class_has_a_registered_method_and_back():
    assert set(ARGS_BY_KIND) == set(METHODS.names())
    assert {"gptq", "w8a8_int8", "fp8", "prune", "distill"} <= set(known_kinds())


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        parse_recipe({"name": "x", "stages": [{"kind": "awq"}]}, "my.yaml")
    msg = str(e.value)
    assert "my.yaml" in msg and "stages[0].kind" in msg and "'awq'" in msg
    for k in known_kinds():
        assert k in msg


def test_missing_kind_is_named():
    with pytest.raises(ConfigError, match=r"stages\[1\] has no 'kind'"):
        parse_recipe({"name": "x", "stages": [{"kind": "w8a8_int8"}, {"bits": 4}]}, "r.yaml")


def test_extra_field_is_refused_with_its_name_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nstages:\n  - kind: gptq\n    bitz: 4\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "stages[0] (gptq).bitz" in msg and "Extra inputs are not permitted" in msg


def test_extra_top_level_field_is_refused():
    with pytest.raises(ConfigError, match="stagez"):
        parse_recipe({"name": "x", "stages": [{"kind": "w8a8_int8"}], "stagez": []}, "r.yaml")


def test_bad_value_names_the_field_and_value():
    with pytest.raises(ConfigError) as e:
        parse_recipe({"name": "x", "stages": [{"kind": "gptq", "bits": 3}]}, "r.yaml")
    assert "stages[0] (gptq).bits" in str(e.value) and "(got 3)" in str(e.value)


def test_quantization_must_be_the_last_stage():
    with pytest.raises(ConfigError, match=r"stages\[0\] \(w8a8_int8\) writes a quantized checkpoint.*stages\[1\] \(gptq\)"):
        parse_recipe({"name": "x", "stages": [{"kind": "w8a8_int8"}, {"kind": "gptq"}]}, "r.yaml")


def test_empty_stages_refused():
    with pytest.raises(ConfigError, match="stages"):
        parse_recipe({"name": "x", "stages": []}, "r.yaml")


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_recipe(["kind"], "r.yaml")


def test_unknown_builtin_lists_builtins():
    with pytest.raises(ConfigError) as e:
        load_recipe("no-such-recipe")
    for name in EXPECTED_BUILTINS:
        assert name in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_builtin_recipes_load(name):
    assert name in builtin_recipes()
    r = load_recipe(name)
    assert r.name == name and r.stages


def test_builtin_recipe_contents():
    assert [s.kind for s in load_recipe("prune-distill-w8a8").stages] == ["prune", "distill", "w8a8_int8"]
    g4 = load_recipe("gptq-w4a16").stages[0]
    assert (g4.bits, g4.group_size) == (4, 64)
    assert load_recipe("gptq-w8a16").stages[0].bits == 8
    awq = load_recipe("awq-w4a16").stages[0]
    assert (awq.kind, awq.method, awq.bits, awq.group_size, awq.sym) == ("gptq", "awq", 4, 64, False)
    assert g4.method == "gptq"
    assert load_recipe("prune-depth").stages[0].target_layers == 22
    assert load_recipe("fp8").stages[0].unsafe_skip_preflight is False


def _example_args():
    """One valid instance of every registered Args class: from the built-in recipes, else defaults."""
    found = {}
    for name in builtin_recipes():
        for st in load_recipe(name).stages:
            found.setdefault(st.kind, st)
    out = []
    for cls in ARGS_CLASSES:
        kind = cls.model_fields["kind"].default
        out.append(found[kind] if kind in found else cls())
    return out


@pytest.mark.parametrize("args", _example_args(), ids=lambda a: a.kind)
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_every_args_class_round_trips(args, fmt):
    recipe = Recipe(name="rt", stages=[args])
    data = recipe.model_dump(mode="json")
    text = yaml.safe_dump(data, sort_keys=False) if fmt == "yaml" else json.dumps(data)
    back = parse_recipe(yaml.safe_load(text) if fmt == "yaml" else json.loads(text), f"round-trip.{fmt}")
    assert back == recipe
    assert type(back.stages[0]) is type(args)
    assert back.stages[0].model_dump() == args.model_dump()


def test_dump_recipe_reloads(tmp_path):
    r = load_recipe("prune-distill-w8a8")
    p = tmp_path / "copy.yaml"
    p.write_text(dump_recipe(r))
    assert load_recipe(p) == r
