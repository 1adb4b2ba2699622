"""Our in-place patch gives the same UNet output as diffusers/peft with the same adapters loaded
unmerged; the mix equals peft's add_weighted_adapter ("cat", "svd"); LDM-named targets get the
same values as diffusers-named ones; the key map agrees with diffusers' checkpoint converter."""

from __future__ import annotations

import copy

import pytest
import torch
from test_lora_helpers import (
    TINY_SD15,
    TINY_SDXL,
    TINY_SSD1B,
    diffusers_lora_unet,
    lora_targets,
    random_factors,
    tiny_unet,
    write_kohya,
    write_peft,
)

from lcm_accel.lora_merge import LoraPatcher, compress_svd, load_lora, mix_cat
from lcm_accel.lora_merge.keymap import NameTranslator, TargetIndex

WEIGHTS = (0.8, 1.3)


def _inputs(unet):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    c = torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 500]), c


def _forward(unet):
    with torch.no_grad():
        return unet(*_inputs(unet)).sample


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    unet = tiny_unet()
    targets = lora_targets(unet)
    kohya = write_kohya(d / "style_kohya.safetensors", random_factors(targets, 4, 1), alpha=2.0)
    peft = write_peft(d / "lcm_peft.safetensors", random_factors(targets, 8, 2))
    return kohya, peft


def test_patched_output_matches_diffusers_unmerged(files):
    unet = tiny_unet()
    base = _forward(unet)
    ref = diffusers_lora_unet(unet, files, WEIGHTS)
    expected = _forward(ref)
    assert (expected - base).norm() / base.norm() > 1e-2  # the adapters really change the output
    patcher = LoraPatcher(unet)
    report = patcher.apply([(load_lora(p), w) for p, w in zip(files, WEIGHTS)])
    assert len(report.targets) == len(lora_targets(unet))
    got = _forward(unet)
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5
    # re-weight without re-reading, against diffusers with the new weights
    ref.set_adapters(["a0", "a1"], weights=[0.3, -0.5])
    patcher.reweight([0.3, -0.5])
    expected = _forward(ref)
    assert ((_forward(unet) - expected).norm() / expected.norm()).item() <= 1e-5
    patcher.restore()
    assert torch.equal(_forward(unet), base)


@pytest.mark.parametrize("lora_names", ["kohya_ldm", "diffusion_model"])
def test_ldm_named_lora_files(tmp_path, lora_names):
    """kohya files with LDM names (lora_unet_input_blocks_1_1_...) and ComfyUI-style
    diffusion_model.* files patch the same weights with the same values."""
    unet = tiny_unet()
    targets = lora_targets(unet)
    factors = random_factors(targets, 4, 5)
    index = TargetIndex([n for n, _ in unet.named_parameters()])
    to_ldm = NameTranslator(index.layout)
    ref_file = write_kohya(tmp_path / "ref.safetensors", factors, alpha=3.0)
    if lora_names == "kohya_ldm":
        path = write_kohya(tmp_path / "ldm.safetensors", factors, alpha=3.0, names=lambda m: to_ldm.translate(m, "ldm"))
    else:
        from safetensors.torch import save_file

        tensors = {}
        for module, (down, up) in factors.items():
            key = "diffusion_model." + to_ldm.translate(module, "ldm")
            tensors.update(
                {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(3.0)}
            )
        path = tmp_path / "comfy.safetensors"
        save_file(tensors, str(path))
    a, b = tiny_unet(), tiny_unet()
    LoraPatcher(a).apply([(load_lora(ref_file), 0.7)])
    LoraPatcher(b).apply([(load_lora(path), 0.7)])
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


class LdmNamedUNet(torch.nn.Module):
    """An LDM-named parameter set (like ComfyUI's model.diffusion_model) for a diffusers UNet."""

    def __init__(self, unet):
        super().__init__()
        index = TargetIndex([n for n, _ in unet.named_parameters()])
        to_ldm = NameTranslator(index.layout)
        self.diffusion_model = torch.nn.Module()
        self.names = {}
        for name, p in unet.named_parameters():
            module, leaf = name.rsplit(".", 1)
            ldm = to_ldm.translate(module, "ldm") + "." + leaf
            self._put(ldm, torch.nn.Parameter(p.detach().clone()))
            self.names["diffusion_model." + ldm] = name

    def _put(self, dotted, param):
        mod = self.diffusion_model
        *path, leaf = dotted.split(".")
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, param)


@pytest.mark.parametrize("config", [TINY_SD15, TINY_SDXL, TINY_SSD1B], ids=["sd15", "sdxl", "ssd1b"])
def test_ldm_named_target_gets_same_values(tmp_path, config):
    unet = tiny_unet(config)
    ldm = LdmNamedUNet(unet)
    targets = lora_targets(unet)
    kohya = write_kohya(tmp_path / "k.safetensors", random_factors(targets, 4, 1), alpha=2.0)
    peft = write_peft(tmp_path / "p.safetensors", random_factors(targets, 3, 2))
    adapters = [(load_lora(kohya), 0.9), (load_lora(peft), 0.4)]
    r1 = LoraPatcher(unet).apply(adapters)
    r2 = LoraPatcher(ldm).apply(adapters)
    assert r2.target_naming == "ldm" and r1.target_naming == "diffusers"
    expected_family = {id(TINY_SD15): "sd15", id(TINY_SDXL): "sdxl", id(TINY_SSD1B): "ssd1b"}[id(config)]
    assert r1.target_family == r2.target_family == expected_family
    assert len(r2.targets) == len(r1.targets) == len(targets)
    params = dict(unet.named_parameters())
    for ldm_name, p in ldm.named_parameters():
        assert torch.equal(p, params[ldm.names[ldm_name]]), ldm_name


@pytest.mark.parametrize("config", [TINY_SD15, TINY_SDXL, TINY_SSD1B], ids=["sd15", "sdxl", "ssd1b"])
def test_keymap_agrees_with_diffusers_converter(config):
    """Our diffusers->LDM names, fed to diffusers' own LDM->diffusers converter, come back unchanged."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = tiny_unet(config)
    names = [n for n, _ in unet.named_parameters()]
    to_ldm = NameTranslator(TargetIndex(names).layout)
    ckpt = {}
    for name in names:
        module, leaf = name.rsplit(".", 1)
        ckpt[f"model.diffusion_model.{to_ldm.translate(module, 'ldm')}.{leaf}"] = name
    converted = convert_ldm_unet_checkpoint(ckpt, dict(unet.config))
    assert converted == {n: n for n in names}


def test_cat_and_svd_mix_equal_peft_add_weighted_adapter():
    """Mix two adapters on linear layers; compare with peft's add_weighted_adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 16))
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["0", "1"]), adapter_name="a"
    )
    model.add_adapter("b", LoraConfig(r=2, lora_alpha=1, target_modules=["0", "1"]))
    for name, p in model.named_parameters():
        if "lora_" in name:
            with torch.no_grad():
                p.copy_(torch.randn_like(p) * 0.3)
    model.add_weighted_adapter(["a", "b"], [0.7, 1.4], "cat", combination_type="cat")
    model.add_weighted_adapter(["a", "b"], [0.7, 1.4], "svd", combination_type="svd", svd_rank=3)
    from lcm_accel.lora_merge import LoraFactors

    for layer in ("0", "1"):
        mod = model.base_model.model[int(layer)]
        parts = [
            (LoraFactors(f"{layer}.{a}", mod.lora_A[a].weight.detach(), mod.lora_B[a].weight.detach(), alpha), w)
            for a, alpha, w in (("a", 8.0, 0.7), ("b", 1.0, 1.4))
        ]
        ours = mix_cat(parts)
        assert torch.allclose(ours.down, mod.lora_A["cat"].weight, rtol=1e-6, atol=1e-7)
        assert torch.equal(ours.up, mod.lora_B["cat"].weight)
        assert mod.scaling["cat"] == 1.0
        svd = compress_svd(ours, 3)
        peft_svd = mod.get_delta_weight("svd")
        assert torch.allclose(svd.delta(), peft_svd, rtol=1e-4, atol=1e-5)
        full = ours.delta()
        err = ((svd.delta() - full).norm() / full.norm()).item()
        assert abs(err - svd.relative_error) < 1e-5 and svd.relative_error > 0
