"""GPTQ group size is checked against every Linear's input dimension before any work, with a useful error."""
from __future__ import annotations

import json

import pytest

from packager.compress.gptq import GPTQArgs, check_group_size, fitting_group_sizes, linear_input_dims
from packager.errors import ConfigError

SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "num_hidden_layers": 30, "vocab_size": 49152}


@pytest.fixture
def smol_config_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    return tmp_path


def test_group_128_on_smollm2_names_hidden_size_and_fits(smol_config_dir):
    with pytest.raises(ConfigError) as e:
        check_group_size(smol_config_dir, 128)
    assert str(e.value) == ("group_size 128 does not divide hidden_size 576 (used by q/k/v/gate/up projections); "
                            "use one of 32, 64, 192 (or -1 for one group per row).")


def test_other_dimensions_are_named(smol_config_dir):
    with pytest.raises(ConfigError, match=r"group_size 256 does not divide hidden_size 576"):
        check_group_size(smol_config_dir, 256)
    cfg = dict(SMOLLM2, hidden_size=512, head_dim=64, num_attention_heads=8, intermediate_size=1400)
    (smol_config_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"does not divide intermediate_size 1400 \(used by down projection\)"):
        check_group_size(smol_config_dir, 64)


@pytest.mark.parametrize("gs", [32, 64, 192, -1])
def test_fitting_group_sizes_pass(smol_config_dir, gs):
    check_group_size(smol_config_dir, gs)


def test_dims_and_fits():
    dims = linear_input_dims(SMOLLM2)
    assert dims["hidden_size"][0] == 576 and dims["intermediate_size"][0] == 1536
    assert dims["num_attention_heads*head_dim"][0] == 576
    assert fitting_group_sizes([576, 1536, 576]) == [32, 64, 192]
    assert fitting_group_sizes([4096, 11008]) == [32, 64, 128, 256]


def test_weights_narrower_than_config_are_checked(tiny_llama_dir, tmp_path):
    # the tiny model: hidden 64, intermediate 128 -> 32 and 64 fit, 128 does not
    GPTQArgs(group_size=32).validate_for(tiny_llama_dir)
    with pytest.raises(ConfigError, match="group_size 128 does not divide hidden_size 64"):
        GPTQArgs(group_size=128).validate_for(tiny_llama_dir)


def test_group_size_zero_refused():
    with pytest.raises(ValueError, match="group_size must be -1"):
        GPTQArgs(group_size=0)
