import numpy as np
import pytest

from layer_battery import run_layer_test
from tinymoe.backend import keras, tf
from tinymoe.layers import (
    ConvBNAct, FeedForward, InvertedResidual, LayerNorm, MobileViTV2Block, MoEFeedForward,
    PatchFold, PatchUnfold, SeparableSelfAttention, TransformerLayer, get_activation,
    make_divisible)

MOE = {"num_experts": 3, "top_k": 2}

LAYER_CASES = [
    (ConvBNAct, {"filters": 8, "kernel_size": 3, "strides": 2}, (8, 8, 4), (4, 4, 8)),
    (ConvBNAct, {"filters": 4, "depthwise": True, "activation": "hard_swish"}, (8, 8, 4), None),
    (InvertedResidual, {"filters": 8, "strides": 1}, (8, 8, 8), None),
    (InvertedResidual, {"filters": 16, "strides": 2, "expand_ratio": 1}, (8, 8, 8), (4, 4, 16)),
    (PatchUnfold, {"patch_size": 2}, (6, 4, 3), (4, 6, 3)),
    (PatchUnfold, {"patch_size": 2, "pad_mode": "edge"}, (5, 3, 3), (4, 6, 3)),
    (PatchFold, {"height": 5, "width": 4, "patch_size": 2}, (4, 6, 3), (5, 4, 3)),
    (LayerNorm, {"epsilon": 1e-5}, (4, 6, 8), None),
    (SeparableSelfAttention, {}, (4, 6, 8), None),
    (FeedForward, {"hidden_dim": 16}, (4, 6, 8), None),
    (MoEFeedForward, {"num_experts": 4, "hidden_dim": 16, "top_k": 2, "routing": "token"},
     (4, 6, 8), None),
    (TransformerLayer, {"ffn_dim": 16, "moe": MOE}, (4, 6, 8), None),
    (MobileViTV2Block, {"attn_dim": 8, "ffn_dim": 16, "num_layers": 2, "moe_layers": (-1,),
                        "moe": MOE}, (6, 6, 12), None),
    (MobileViTV2Block, {"attn_dim": 8, "ffn_dim": 16, "num_layers": 1, "pad_mode": "edge"},
     (3, 3, 12), None),
    (SeparableSelfAttention, {"pre_norm": True, "bn_momentum": 0.5}, (4, 6, 8), None),
    (FeedForward, {"hidden_dim": 16, "activation": "relu6", "pre_norm": True}, (4, 6, 8),
     None),
    (MobileViTV2Block, {"attn_dim": 8, "ffn_dim": 16, "num_layers": 2, "norm": "batch",
                        "activation": "relu6"}, (4, 4, 12), None),
    (LayerNorm, {"fast": True}, (4, 6, 8), None),
    (MobileViTV2Block, {"attn_dim": 8, "ffn_dim": 16, "num_layers": 2, "norm": "mixed",
                        "activation": "relu6"}, (4, 4, 12), None),
]


@pytest.mark.parametrize("layer_cls,kwargs,input_shape,output_shape", LAYER_CASES,
                         ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(LAYER_CASES)])
def test_layer_battery(layer_cls, kwargs, input_shape, output_shape, tmp_path):
    run_layer_test(layer_cls, kwargs, input_shape, tmp_path, output_shape)


def test_unfold_groups_each_2x2_patch_and_fold_inverts_it():
    x = np.arange(4 * 6 * 2, dtype=np.float32).reshape(1, 4, 6, 2)
    tokens = PatchUnfold(2)(x).numpy()  # [1, P=4, N=6, 2]
    assert tokens.shape == (1, 4, 6, 2)
    # Patch n = (row r, column c) of the 2x3 patch grid; position p = (dy, dx) inside it.
    for n in range(6):
        r, c = divmod(n, 3)
        for p in range(4):
            dy, dx = divmod(p, 2)
            np.testing.assert_array_equal(tokens[0, p, n], x[0, 2 * r + dy, 2 * c + dx])
    np.testing.assert_array_equal(PatchFold(4, 6, 2)(tokens).numpy(), x)


def test_unfold_pads_odd_maps_and_fold_crops_back():
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype(np.float32)
    tokens = PatchUnfold(2)(x)
    assert tokens.shape == (2, 4, 6, 4)  # 3x5 padded to 4x6: 2x3 patches
    np.testing.assert_array_equal(PatchFold(3, 5, 2)(tokens).numpy(), x)


def test_edge_padding_copies_the_last_row_and_column_and_no_token_has_zero_variance():
    x = np.random.default_rng(3).normal(size=(1, 3, 3, 4)).astype(np.float32)
    tokens = PatchUnfold(2, pad_mode="edge")(x)
    padded = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)], mode="edge")
    np.testing.assert_array_equal(tokens.numpy(), PatchUnfold(2)(padded).numpy())
    assert PatchUnfold(2).pad_mode == "edge"  # the default
    assert tokens.numpy().var(axis=-1).min() > 0
    np.testing.assert_array_equal(PatchFold(3, 3, 2)(tokens).numpy(), x)
    # Zero padding, for comparison: 7 of the 16 pixel tokens are zero vectors.
    zeros = PatchUnfold(2, pad_mode="zeros")(x).numpy()
    assert int(np.sum(zeros.var(axis=-1) == 0)) == 7


def test_a_config_saved_before_pad_mode_loads_with_the_zero_padding_it_was_trained_with():
    for layer in (PatchUnfold(2), MobileViTV2Block(8, 16, 1)):
        config = layer.get_config()
        assert type(layer).from_config(config).pad_mode == "edge"
        del config["pad_mode"]
        assert type(layer).from_config(config).pad_mode == "zeros"


def test_unfold_refuses_a_pad_mode_it_does_not_know_and_an_edge_it_cannot_copy():
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        PatchUnfold(2, pad_mode="reflect")
    with pytest.raises(ValueError, match="cannot be edge-padded to 4x4"):
        PatchUnfold(4, pad_mode="edge")(np.zeros((1, 1, 1, 2), np.float32))


def test_unfold_refuses_a_map_it_cannot_tile_when_padding_is_off():
    with pytest.raises(ValueError, match="3x5 feature map cannot be cut into 2x2"):
        PatchUnfold(2, pad=False)(np.zeros((1, 3, 5, 4), np.float32))


def test_fold_refuses_tokens_of_the_wrong_grid():
    with pytest.raises(ValueError, match="do not fold into a 4x4 map"):
        PatchFold(4, 4, 2)(np.zeros((1, 4, 6, 3), np.float32))


def test_layer_norm_matches_keras_layer_normalization():
    x = np.random.default_rng(2).normal(size=(2, 4, 5, 8)).astype(np.float32) * 3 + 1
    ours = LayerNorm(epsilon=1e-5)
    reference = keras.layers.LayerNormalization(epsilon=1e-5)
    ours.build(x.shape)
    reference.build(x.shape)
    gamma = np.linspace(0.5, 1.5, 8).astype(np.float32)
    beta = np.linspace(-1, 1, 8).astype(np.float32)
    ours.set_weights([gamma, beta])
    reference.set_weights([gamma, beta])
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), atol=1e-5)


def test_separable_attention_matches_numpy_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 4, 6, 8)).astype(np.float32)
    layer = SeparableSelfAttention()
    out = layer(x).numpy()
    w_qkv, b_qkv = layer.qkv.kernel.numpy()[0, 0], layer.qkv.bias.numpy()
    w_out, b_out = layer.out_proj.kernel.numpy()[0, 0], layer.out_proj.bias.numpy()
    qkv = x @ w_qkv + b_qkv
    query, key, value = qkv[..., :1], qkv[..., 1:9], qkv[..., 9:]
    scores = np.exp(query - query.max(axis=2, keepdims=True))
    scores /= scores.sum(axis=2, keepdims=True)  # softmax over the patches
    context = (key * scores).sum(axis=2, keepdims=True)
    expected = (np.maximum(value, 0) * context) @ w_out + b_out
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_inverted_residual_adds_the_input_only_when_shapes_allow():
    x = tf.random.normal((1, 8, 8, 8))
    same = InvertedResidual(8, strides=1)
    same(x)
    assert same.use_residual
    down = InvertedResidual(8, strides=2)
    down(x)
    assert not down.use_residual


def test_unknown_activation_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'gelu'.*TFLite Micro has no kernel"):
        ConvBNAct(8, activation="gelu")
    assert get_activation("hard_swish")(tf.constant([3.0])).numpy()[0] == pytest.approx(3.0)


def test_depthwise_conv_refuses_a_channel_change():
    with pytest.raises(ValueError, match="keeps the channels"):
        ConvBNAct(8, depthwise=True)(tf.zeros((1, 4, 4, 3)))


def test_block_refuses_a_transformer_index_out_of_range():
    with pytest.raises(ValueError, match="index 5 is out of range for a block of 2"):
        MobileViTV2Block(8, 16, 2, moe_layers=(5,), moe=MOE)


def test_make_divisible_follows_the_mobilenet_rule():
    assert make_divisible(32 * 0.5, 8) == 16
    assert make_divisible(64 * 0.75, 16) == 48
    assert make_divisible(10, 8) == 16  # never below min_value


def test_fast_layer_norm_normalises_as_the_full_one_without_its_affine_map():
    """The fast form computes its channel means with a 1x1 convolution: the same numbers as
    REDUCE_MEAN up to float32 summation order (a few ulp of values near 1)."""
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(2, 4, 6, 8)).astype(np.float32)
    full, fast = LayerNorm(), LayerNorm(fast=True)
    full.build(x.shape)
    full.gamma.assign(np.full(8, 1.0, np.float32))
    np.testing.assert_allclose(fast(x).numpy(), full(x).numpy(), rtol=0, atol=1e-5)
    assert not fast.weights
    with pytest.raises(ValueError, match="a fast LayerNorm takes 4-D inputs"):
        LayerNorm(fast=True)(np.zeros((2, 8), np.float32))
