"""Placement specs: shipped specs, MAC weights by hand, custom specs and their errors."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM, RwkvConfig, RwkvForCausalLM

from thresh_opt import ConfigError, UserError
from thresh_opt.models import ThresholdedModel, builtin_specs, load_spec, resolve_sites, spec_for

RWKV_ORDER = ["att.key", "att.receptance", "att.value", "att.output", "ffn.receptance", "ffn.key", "ffn.value"]


def small_rwkv(d: int = 32, layers: int = 2) -> RwkvForCausalLM:
    return RwkvForCausalLM(RwkvConfig(vocab_size=64, hidden_size=d, attention_hidden_size=d,
                                      intermediate_size=4 * d, num_hidden_layers=layers))


def small_opt(d: int = 32, layers: int = 2) -> OPTForCausalLM:
    return OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=d, word_embed_proj_dim=d, ffn_dim=4 * d,
                                    num_hidden_layers=layers, num_attention_heads=2))


def test_shipped_specs_are_rwkv4_and_opt():
    assert set(builtin_specs()) == {"rwkv4", "opt"}


def test_rwkv_mac_weights_by_hand():
    d = 32
    sites = resolve_sites(small_rwkv(d, 3), spec_for(small_rwkv()))
    assert len(sites) == 3 * 7
    assert [s.kind for s in sites[:7]] == RWKV_ORDER  # the published greedy order
    expected = dict.fromkeys(RWKV_ORDER, d * d) | {"ffn.key": d * 4 * d, "ffn.value": 4 * d * d}
    for s in sites:
        assert s.macs == expected[s.kind], s.name
    assert sites[-1].name == "blocks.2.ffn.value"
    # relative weights as in design.md 1.1: 1 for the d x d maps, 4 for the ffn key and value
    assert {k: v // (d * d) for k, v in expected.items()} == {**dict.fromkeys(RWKV_ORDER, 1),
                                                               "ffn.key": 4, "ffn.value": 4}


def test_opt_mac_weights_by_hand():
    d = 32
    sites = resolve_sites(small_opt(d, 2), spec_for(small_opt()))
    assert [s.name for s in sites] == ["layers.0.qkv", "layers.0.fc1", "layers.0.fc2",
                                       "layers.1.qkv", "layers.1.fc1", "layers.1.fc2"]
    assert [s.macs for s in sites[:3]] == [3 * d * d, d * 4 * d, 4 * d * d]


def test_embedded_models_have_the_expected_sites(rwkv, opt):
    n_rwkv = rwkv.model.config.num_hidden_layers
    d = rwkv.model.config.hidden_size
    assert len(rwkv.thresholded.names) == 7 * n_rwkv
    assert rwkv.thresholded.macs["blocks.0.ffn.key"] == 4 * d * d
    assert len(opt.thresholded.names) == 3 * opt.model.config.num_hidden_layers


def test_unsupported_architecture_lists_the_supported_ones():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(UserError) as err:
        ThresholdedModel(gpt2)
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg and "RwkvForCausalLM" in msg and "OPTForCausalLM" in msg
    assert "--placement" in msg


def test_a_custom_spec_describes_another_architecture(tmp_path):
    spec_file = tmp_path / "gpt2.yaml"
    spec_file.write_text(
        "arch: gpt2\nmodel_classes: [GPT2LMHeadModel]\nblocks: transformer.h\nname_prefix: h\n"
        "sites:\n  - {name: fc, hook: mlp.c_fc, consumers: [mlp.c_fc]}\n"
        "  - {name: proj, hook: mlp.c_proj, consumers: [mlp.c_proj]}\n"
    )
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    tm = ThresholdedModel(gpt2, load_spec(spec_file))
    assert tm.macs == {"h.0.fc": 32 * 128, "h.0.proj": 128 * 32, "h.1.fc": 32 * 128, "h.1.proj": 128 * 32}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("arch: x\nmodel_classes: [A]\nblocks: b\nname_prefix: p\n", "sites"),
        ("arch: x\nmodel_classes: [A]\nblocks: b\nname_prefix: p\n"
         "sites:\n  - {name: a, hook: h}\n", "sites.0.consumers"),
        ("arch: x\nmodel_classes: [A]\nblocks: b\nname_prefix: p\n"
         "sites:\n  - {name: a, hook: h, consumers: [h], where: middle}\n", "sites.0.where"),
        ("arch: x\nmodel_classes: [A]\nblocks: b\nname_prefix: p\n"
         "colour: red\nsites:\n  - {name: a, hook: h, consumers: [h]}\n", "colour"),
        ("arch: x\nmodel_classes: [A]\nblocks: b\nname_prefix: p\n"
         "sites:\n  - {name: a, hook: h, consumers: [h], tensr: t}\n", "sites.0.tensr"),
        ("arch: [unclosed\n", "(file)"),
    ],
)
def test_bad_spec_files_name_the_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert err.value.field == field
    assert str(path) in str(err.value)
    if field.endswith("tensr"):
        assert "allowed: name, tensor, hook, where, arg, consumers" in str(err.value)
    if field == "colour":
        assert "allowed: arch, model_classes, blocks, name_prefix, sites" in str(err.value)


def test_a_spec_pointing_at_a_missing_module_is_a_clear_error(tmp_path):
    path = tmp_path / "wrong.yaml"
    path.write_text("arch: x\nmodel_classes: [RwkvForCausalLM]\nblocks: rwkv.blocks\nname_prefix: b\n"
                    "sites:\n  - {name: a, hook: attention.nope, consumers: [attention.key]}\n")
    with pytest.raises(UserError, match=r"attention.nope"):
        ThresholdedModel(small_rwkv(), load_spec(path))
