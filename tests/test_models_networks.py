"""The shared networks: SPAIR's backbone (grid shape, TF right-only padding) and its copy-free
padding for inference."""

import pytest
import torch
import torch.nn.functional as F

from spair.models.networks import Backbone, _conv_right_padded, prime_factors, right_only_pad


def test_strides_and_grid_shape():
    assert prime_factors(12) == [2, 2, 3] and prime_factors(8) == [2, 2, 2]
    b = Backbone(cell_size=12, channels=8, n_features=5)
    assert b.strides == [2, 2, 3]
    with torch.no_grad():
        for h, w in ((48, 48), (50, 37), (12, 12)):
            y = b(torch.rand(1, 3, h, w))
            assert y.shape == (1, 5, *b.grid_shape(h, w)) == (1, 5, -(-h // 12), -(-w // 12))


def test_padding_goes_after_the_data():
    # TF "SAME" with everything after the data: the first output of a stride-2 4x4 conv sees pixels 0..3
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 4, stride=2)
    x = torch.rand(1, 1, 8, 8)
    ph = right_only_pad(8, 4, 2)
    y = conv(F.pad(x, (0, ph, 0, ph)))
    assert ph == 2 and y.shape[-2:] == (4, 4)
    assert torch.allclose(y[0, 0, 0, 0], (conv.weight[0, 0] * x[0, 0, :4, :4]).sum() + conv.bias[0])
    assert torch.allclose(y[0, 0, 3, 3], (conv.weight[0, 0, :2, :2] * x[0, 0, 6:, 6:]).sum() + conv.bias[0])


@pytest.mark.parametrize("size,stride", [((48, 48), 2), ((24, 24), 2), ((12, 12), 3), ((47, 33), 2), ((13, 11), 3),
                                         ((5, 9), 3), ((210, 160), 2)])
def test_copy_free_padding_equals_explicit_padding(size, stride):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, 4, stride=stride)
    x = torch.rand(2, 3, *size)
    ph, pw = right_only_pad(size[0], 4, stride), right_only_pad(size[1], 4, stride)
    with torch.no_grad():
        want = conv(F.pad(x, (0, pw, 0, ph)))
        got = _conv_right_padded(conv, x, stride, ph, pw)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_backbone_inference_equals_training_forward():
    torch.manual_seed(2)
    b = Backbone(cell_size=12, channels=16, n_features=6)
    for size in ((48, 48), (84, 84), (50, 37)):
        x = torch.rand(2, 3, *size)
        with torch.no_grad():
            fast = b(x)
        slow = b(x)                       # grad enabled: the explicit padding
        assert slow.requires_grad
        torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-6)
