"""The segmentation contract (models.segmentation) and the one way to make a backbone (models.backbones)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from dla_repro.models.backbones import TINY_CHANNELS, create_backbone
from dla_repro.models.dla_up import DLAUpSegmenter, create_dla_up
from dla_repro.models.parsenet import ParseNetHead, create_parsenet
from dla_repro.models.segmentation import BaseSegmenter, FCNHead, Segmenter, level_info


def test_tiny_backbone_is_the_narrow_dlarepro_dla():
    backbone = create_backbone("dlarepro_dla34", tiny=True, out_indices=(1, 2, 3))
    channels, strides = level_info(backbone)
    assert channels == list(TINY_CHANNELS[1:4]) and strides == [2, 4, 8]
    feats = backbone(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == channels


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("resnet18", dict(tiny=True), "dlarepro_"),
        ("dlarepro_dla34", dict(tiny=True, channels=(4, 8, 8, 16, 16, 32)), "do not pass channels"),
        ("dla34_tiny", {}, "tiny=True"),
    ],
)
def test_tiny_is_asked_for_one_way(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_backbone(name, **kwargs)


def test_tiny_flag_builds_what_the_channels_list_built():
    torch.manual_seed(0)
    by_flag = create_dla_up("dlarepro_dla34", 3, tiny=True).state_dict()
    torch.manual_seed(0)
    by_list = create_dla_up("dlarepro_dla34", 3, channels=TINY_CHANNELS).state_dict()
    assert list(by_flag) == list(by_list) and all(torch.equal(by_flag[k], by_list[k]) for k in by_flag)
    parsenet = create_parsenet("dlarepro_dla34", 3, tiny=True, out_indices=(0, 1, 2, 3))
    assert parsenet.head.in_channels == TINY_CHANNELS[3]
    with pytest.raises(ValueError, match="by name"):
        create_dla_up(create_backbone("dlarepro_dla34", tiny=True), 3, tiny=True)


def _gald_like(num_classes: int = 4) -> Segmenter:
    """A main head on the last level and an auxiliary FCN head on level 3 (GALD's arrangement)."""
    backbone = create_backbone("dlarepro_dla34", tiny=True)
    channels, _ = level_info(backbone)
    head = ParseNetHead(channels[-1], num_classes, fusion="none", l2norm=False)
    aux = FCNHead(channels[3], num_classes, channels=16)
    return Segmenter(backbone, head, aux_head=aux, aux_index=3)


def test_aux_head_in_training_only_at_input_size():
    model = _gald_like()
    x = torch.randn(2, 3, 45, 60)  # not a multiple of the stride 32: padded, then cropped
    main, aux = model.train()(x)
    assert main.shape == (2, 4, 45, 60) and set(aux) == {"aux"} and aux["aux"].shape == (2, 4, 45, 60)
    (main.logsumexp(1).mean() + 0.4 * aux["aux"].logsumexp(1).mean()).backward()
    assert model.aux_head[0].conv.weight.grad is not None
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 45, 60)
    assert "aux_head.0.conv.weight" in model.state_dict()


def test_without_aux_head_no_aux_keys_and_a_plain_tensor_in_training():
    model = create_dla_up("dlarepro_dla34", 3, tiny=True).train()
    assert isinstance(model(torch.randn(2, 3, 32, 32)), torch.Tensor)
    assert model.aux_head is None and not any(k.startswith("aux_head") for k in model.state_dict())


def test_padding_to_the_stride_keeps_the_unpadded_pixels_aligned():
    model = create_dla_up("dlarepro_dla34", 3, tiny=True).eval()
    assert model.stride == 32 and model.pad_to_stride
    x = torch.randn(1, 3, 40, 50)
    padded = nn.functional.pad(x, (0, 64 - 50, 0, 64 - 40))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :40, :50])


def test_several_levels_reach_the_decoder_as_a_list():
    backbone = create_backbone("dlarepro_dla34", tiny=True)
    seen = []

    class Probe(nn.Module):
        def forward(self, levels):
            seen.append([f.shape[1] for f in levels])
            return levels[-1]

    model = Segmenter(backbone, nn.Conv2d(TINY_CHANNELS[5], 2, 1), neck=Probe(), in_index=(3, 5)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    assert seen == [[TINY_CHANNELS[3], TINY_CHANNELS[5]]]


def test_contract_arguments():
    backbone = create_backbone("dlarepro_dla34", tiny=True)
    with pytest.raises(TypeError):
        BaseSegmenter(backbone)  # decode / forward_head are abstract
    with pytest.raises(ValueError, match="aux_index"):
        Segmenter(backbone, nn.Identity(), aux_head=FCNHead(8, 2))
    with pytest.raises(ValueError, match="feature_info"):
        DLAUpSegmenter(nn.Conv2d(3, 3, 1), nn.Identity(), 2, 0, 2, "fcn")


def test_timm_registration_works_in_either_import_order():
    for code in (
        "import dla_repro, timm; timm.create_model('dlarepro_dla34', channels=(8, 16, 32, 64, 128, 256))",
        "import timm, dla_repro; timm.create_model('dlarepro_dla34', channels=(8, 16, 32, 64, 128, 256))",
    ):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
