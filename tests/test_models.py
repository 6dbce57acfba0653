import dataclasses

import numpy as np
import pytest

import tinymoe
from conftest import synthetic_images
from tinymoe.backend import keras
from tinymoe.models import (MoEConfig, create_model, get_config, list_models, read_routing,
                            settle_batch_norms)

REFERENCE_PARAMS = {  # MobileViTv2 at 256x256 with 1000 classes (Mehta & Rastegari, 2022)
    "mobilevit_v2_050": 1.37e6,
    "mobilevit_v2_075": 2.87e6,
    "mobilevit_v2_100": 4.90e6,
}


def test_registry_lists_the_required_variants():
    assert {"mobilevit_v2_050", "mobilevit_v2_075", "mobilevit_v2_100",
            "mobilevit_v2_moe_050"} <= set(list_models())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_dense_parameter_counts_match_the_reference(name):
    model = create_model(name, num_classes=1000, input_shape=(256, 256, 3))
    params = model.count_params()
    assert abs(params - REFERENCE_PARAMS[name]) / REFERENCE_PARAMS[name] < 0.03, params


@pytest.mark.parametrize("name", list_models())
def test_every_model_fits_a_step_and_round_trips_through_keras_file(name, tmp_path):
    images, labels = synthetic_images(8, 64, 4)
    model = create_model(name, num_classes=4, input_shape=(64, 64, 3))
    # run_eagerly: tracing the training graph costs 30-70 s per model on 2 cores.
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    before = model(images, training=False).numpy()
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
    np.testing.assert_allclose(loaded(images, training=False).numpy(), before, rtol=1e-5,
                               atol=1e-5)


def test_moe_model_has_experts_where_configured_and_routing_can_be_read():
    model = create_model("mobilevit_v2_moe_050", num_classes=5, input_shape=(96, 96, 3))
    images, _ = synthetic_images(3, 96, 5)
    routing = read_routing(model, images)
    # Default flagship: the last transformer layer of stages 4 (4 layers) and 5 (3 layers).
    assert sorted(routing) == ["stage4_mvit/transformer_3", "stage5_mvit/transformer_2"]
    # 96x96 input: stage 4 is 6x6 (9 patches >= 2 x 4 experts: one route per patch);
    # stage 5 is 3x3, padded to 4x4 (4 patches < 8): "auto" routes its 4 x 4 tokens one by one.
    assert routing["stage4_mvit/transformer_3"]["probs"].shape == (3, 1, 9, 4)
    assert routing["stage5_mvit/transformer_2"]["experts"].shape == (3, 4, 4, 1)


def test_a_per_patch_layer_with_fewer_than_two_patches_per_expert_is_refused():
    config = MoEConfig(num_experts=4, layers=((4, -1), (5, -1)), routing="patch")
    # 128x128: stage 4 is 8x8 (16 patches, enough); stage 5 is 4x4 (4 patches).
    with pytest.raises(ValueError, match=r"stage5_mvit: per-patch routing needs at least "
                                         r"2 x 4 experts = 8 patches per image, but this "
                                         r"layer has 4"):
        create_model("mobilevit_v2_050", num_classes=3, input_shape=(128, 128, 3), moe=config)
    model = create_model("mobilevit_v2_050", num_classes=3, input_shape=(128, 128, 3),
                         moe=dataclasses.replace(config, layers=((4, -1),)))
    assert model.get_layer("stage4_mvit").transformer[3].ffn.routing == "patch"


def test_moe_config_is_an_override_away():
    config = MoEConfig(num_experts=2, top_k=2, layers=((3, 0), (3, 1)), routing="token")
    model = create_model("mobilevit_v2_050", num_classes=3, input_shape=(64, 64, 3), moe=config)
    block = model.get_layer("stage3_mvit")
    assert block.moe_layers == (0, 1)
    assert block.transformer[0].ffn.num_experts == 2


def test_profile_counts_params_and_macs_from_the_layers():
    dense = create_model("mobilevit_v2_050", num_classes=10, input_shape=(96, 96, 3))
    moe = create_model("mobilevit_v2_moe_050", num_classes=10, input_shape=(96, 96, 3))
    dense_profile, moe_profile = tinymoe.profile(dense), tinymoe.profile(moe)
    assert dense_profile["params"] == dense.count_params()
    # The classifier alone: 256 features x 10 classes.
    assert 256 * 10 < dense_profile["macs"] < 2e8
    # Masked experts run every expert: E=4 feed-forwards instead of one in two layers.
    stage4_ffn = 36 * 4 * 96 * 192 * 2 / 4  # 6x6 map = 36 tokens, d=96, h=192
    assert moe_profile["macs"] - dense_profile["macs"] >= 3 * stage4_ffn
    bigger = create_model("mobilevit_v2_050", num_classes=10, input_shape=(128, 128, 3))
    assert tinymoe.profile(bigger)["macs"] > dense_profile["macs"]


def test_count_macs_of_a_dense_layer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert tinymoe.count_macs(model) == 12


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "mobilevit_v2_05"}, "Unknown model 'mobilevit_v2_05'. Did you mean"),
    ({"input_shape": (100, 100, 3)}, "Input height 100 cannot be taken"),
    ({"input_shape": (96, 16, 3)}, "Input width 16 cannot be taken"),
    ({"input_shape": (96, 96)}, r"must be \(height, width, channels\)"),
    ({"num_classes": 0}, "num_classes must be at least 1, got 0"),
])
def test_bad_model_requests_name_the_value(kwargs, message):
    args = {"name": "mobilevit_v2_050", "num_classes": 10, "input_shape": (96, 96, 3), **kwargs}
    with pytest.raises(ValueError, match=message):
        create_model(args.pop("name"), **args)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_experts": 0}, "num_experts must be at least 1, got 0"),
    ({"num_experts": 2, "top_k": 3}, "top_k must be between 1 and num_experts=2, got 3"),
    ({"layers": ((2, 0),)}, "stage must be one of"),
])
def test_bad_moe_config_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEConfig(**kwargs)


def test_layout_validation_names_the_problem():
    from tinymoe.models import MobileViTV2Config, StageConfig
    good = MobileViTV2Config(layout=get_config("mobilevit_v2_mcu").layout)
    stages = list(good.layout)
    with pytest.raises(ValueError, match="layout must have 5 stages, got 4"):
        MobileViTV2Config(layout=tuple(stages[:4]))
    with pytest.raises(ValueError, match="downsample by 32, got strides"):
        MobileViTV2Config(layout=(StageConfig(24, stride=1), *stages[1:]))
    with pytest.raises(ValueError, match="Stage 2 must not have attention"):
        MobileViTV2Config(layout=(stages[0], StageConfig(32, stride=1, attn_dim=16,
                                                          attn_layers=1), *stages[2:]))


def test_mcu_models_keep_every_activation_tensor_off_the_high_resolution_maps():
    """The design rules of the MCU layout, read from the int8 graph at 128x128: no tensor
    beyond the stem at 64x64, and no activation op (LOGISTIC, MUL of swish, HARD_SWISH)
    above 16x16, where ReLU6 is fused into the convolutions."""
    from tinymoe.export import op_table, to_tflite
    model = create_model("mobilevit_v2_mcu_moe", num_classes=3, input_shape=(128, 128, 3))
    images = np.random.default_rng(0).uniform(0, 255, (4, 128, 128, 3)).astype(np.float32)
    ops = op_table(to_tflite(model, images))
    large = [row for row in ops if len(row["output_shape"]) == 4
             and row["output_shape"][1] * row["output_shape"][2] >= 64 * 64]
    assert [row["op"] for row in large] == ["CONV_2D"]  # the stem
    assert ops[1]["op"] == "DEPTHWISE_CONV_2D" and ops[1]["output_shape"][1:3] == [32, 32]
    separate = [row for row in ops if row["op"] in ("LOGISTIC", "HARD_SWISH", "RELU6")
                and np.prod(row["output_shape"][:-1]) > 16 * 16]
    assert not separate, separate


def test_the_mcu_model_spends_few_int8_ops_on_normalisation_and_none_on_activation():
    """mobilevit_v2_mcu at 128x128: ReLU6 fuses into the convolutions, each feed-forward's
    batch norm folds into its first convolution, and the one layer norm per transformer
    layer (before the attention) is the fast form: no MEAN but the global pool's (the means
    are convolutions), one SUB, three MUL (square, normalise, the attention's product), one
    RSQRT and two ADD (the residuals: epsilon becomes the variance convolution's bias) per
    layer, no LOGISTIC or HARD_SWISH. Its
    layer-norm form has two full layer norms per layer and a third per block."""
    from tinymoe.export import op_names, to_tflite
    images = np.random.default_rng(0).uniform(0, 255, (8, 128, 128, 3)).astype(np.float32)
    counts = {}
    for name in ("mobilevit_v2_mcu", "mobilevit_v2_mcu_layernorm"):
        keras.utils.set_random_seed(0)
        model = create_model(name, num_classes=3, input_shape=(128, 128, 3))
        # An untrained network's batch-norm statistics shrink the tokens to ranges no
        # trained model has (and TFLM's SOFTMAX cannot take).
        ops = op_names(to_tflite(settle_batch_norms(model, images), images))
        counts[name] = {op: ops.count(op) for op in set(ops)}
    fast, layer_norm = counts["mobilevit_v2_mcu"], counts["mobilevit_v2_mcu_layernorm"]
    layers = fast["SOFTMAX"]  # one per transformer layer: 1 + 2 + 2
    assert layers == 5
    assert not {"LOGISTIC", "HARD_SWISH"} & set(fast)
    assert (fast["MEAN"], fast["SUB"], fast["RSQRT"], fast["MUL"], fast["ADD"]) == (
        1, layers, layers, 3 * layers, 2 * layers)
    blocks = 3
    assert layer_norm["RSQRT"] == 2 * 6 + blocks and layer_norm["MEAN"] == 2 * 15 + 1
    assert layer_norm["LOGISTIC"] == 3 * blocks  # the depthwise and two feed-forwards


def test_settling_batch_norms_sets_their_statistics_and_nothing_else():
    keras.utils.set_random_seed(0)
    model = create_model("mobilevit_v2_mcu", num_classes=3, input_shape=(64, 64, 3))
    images = np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    stem = model.get_layer("stem").norm
    weights = {w.name: w.numpy() for w in model.weights if "moving" not in w.name}
    settle_batch_norms(model, images)
    moved = {w.name: w.numpy() for w in model.weights if "moving" not in w.name}
    assert all(np.array_equal(weights[name], moved[name]) for name in weights)
    # The stem's statistics are now its batch's (momentum 0), and the momentum is back.
    features = model.get_layer("stem").conv(model.get_layer("rescale")(images)).numpy()
    np.testing.assert_allclose(stem.moving_mean.numpy(), features.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    assert stem.momentum == 0.9
