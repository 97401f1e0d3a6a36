import pytest
import torch

from softlabels.models import MODELS, build_model, get_model_spec
from softlabels.registry import UnknownNameError


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_convnet_param_counts_match_the_field():
    # paper.md §2: ConvNet-3 on CIFAR-10 has 320,010 parameters; CIFAR-100 504,420
    assert count(build_model("convnet-d3", in_channels=3, num_classes=10, image_size=(32, 32))) == 320_010
    assert count(build_model("convnet-d3", in_channels=3, num_classes=100, image_size=(32, 32))) == 504_420
    assert count(build_model("convnet-d4", in_channels=3, num_classes=200, image_size=(64, 64))) == 857_160


def test_mnist_like_input_is_padded_to_32():
    m = build_model("convnet-d3", in_channels=1, num_classes=10, image_size=(28, 28))
    assert m.features[0].padding == (3, 3)
    assert m.feature_dim == 128 * 4 * 4
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_norm_and_pool_variants_and_width_override():
    spec = get_model_spec("convnet-d3", width=16, norm="batchnorm", pooling="maxpool")
    m = build_model(spec, in_channels=3, num_classes=5, image_size=(16, 16))
    assert isinstance(m.features[1], torch.nn.BatchNorm2d)
    assert isinstance(m.features[3], torch.nn.MaxPool2d)
    assert m(torch.randn(3, 3, 16, 16)).shape == (3, 5)


def test_too_deep_for_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        build_model("convnet-d5", in_channels=1, num_classes=3, image_size=(8, 8))


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownNameError, match="convnet-d3"):
        MODELS.get("convnet-d33")


def test_bad_spec_values():
    with pytest.raises(ValueError, match="norm"):
        get_model_spec("convnet-d3", norm="layernorm")
    with pytest.raises(TypeError):
        get_model_spec("convnet-d3", width=2.5)


@pytest.mark.parametrize(("shape", "pooling"), [((1, 28, 28), "avgpool"), ((3, 16, 16), "avgpool"),
                                               ((3, 8, 8), "none")])
def test_fused_stem_computes_the_same_function_and_gradients(shape, pooling):
    torch.manual_seed(0)
    spec = get_model_spec("convnet-d3", width=16, pooling=pooling)
    fused = build_model(spec, in_channels=shape[0], num_classes=5, image_size=shape[1:])
    plain = build_model(spec, in_channels=shape[0], num_classes=5, image_size=shape[1:])
    plain.load_state_dict(fused.state_dict())
    plain.fused_stem = False
    assert fused.fused_stem
    x = torch.randn(6, *shape) * 1.5 + 0.7  # off-centre inputs: the statistics must not assume mean 0
    a, b = fused(x), plain(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    a.square().sum().backward()
    b.square().sum().backward()
    grads = dict(plain.named_parameters())
    for name, p in fused.named_parameters():
        if name == "features.0.bias":  # cancels in the instance norm: zero in exact arithmetic
            assert p.grad is None and grads[name].grad.abs().max() < 1e-4
            continue
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-4, rtol=1e-3), name
    with torch.autocast("cpu", dtype=torch.bfloat16):  # reduced precision: same function to bf16 rounding
        assert (fused(x) - plain(x)).abs().max() < 0.05 * plain(x).abs().max()


def test_fused_stem_only_for_instance_norm():
    m = build_model(get_model_spec("convnet-d3", width=8, norm="batchnorm"), in_channels=1, num_classes=3,
                    image_size=(16, 16))
    assert not m.fused_stem


def test_fused_stem_channels_last_layout_gives_the_same_values():
    from softlabels.models import instance_norm_stem

    m = build_model(get_model_spec("convnet-d3", width=8), in_channels=3, num_classes=4, image_size=(16, 16))
    x = torch.randn(5, 3, 16, 16)
    a = instance_norm_stem(x, m.features[0], m.features[1])
    b = instance_norm_stem(x, m.features[0], m.features[1], channels_last=True)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16)])
def test_precomputed_stem_stats_give_the_same_logits(shape):
    m = build_model(get_model_spec("convnet-d3", width=8), in_channels=shape[0], num_classes=4,
                    image_size=shape[1:])
    x = torch.randn(5, *shape) * 1.3 + 0.4
    stats = m.stem_stats(x)
    assert [tuple(s.shape) for s in stats] == [(5, 9 * shape[0]), (5, 9 * shape[0], 9 * shape[0])]
    torch.testing.assert_close(m(x, stats), m(x), rtol=1e-5, atol=1e-5)
    other = m.stem_stats(torch.randn(5, *shape))  # the stats are used, not recomputed from x
    assert not torch.allclose(m(x, other), m(x), atol=1e-3)


def test_stem_stats_are_none_without_a_fused_stem():
    m = build_model(get_model_spec("convnet-d3", width=8, norm="batchnorm"), in_channels=1, num_classes=3,
                    image_size=(16, 16))
    assert m.stem_stats(torch.randn(2, 1, 16, 16)) is None
