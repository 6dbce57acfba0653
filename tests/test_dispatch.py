"""Fixed-capacity sparse dispatch of the mixture of experts (inference and export)."""

import math

import numpy as np
import pytest

from int8_ops import assert_ops_agree
from test_moe import numpy_moe, randomised
from tinymoe.backend import keras, tf
from tinymoe.cli import main
from tinymoe.export import litert_invoke, op_table, quantize, tflm_invoke, to_tflite
from tinymoe.layers import MoEFeedForward
from tinymoe.layers.routing_ops import dispatch_slots
from tinymoe.models import create_model, with_dispatch


def test_dispatch_slots_fill_each_expert_in_patch_order_and_drop_the_overflow():
    slot, source = dispatch_slots(tf.constant([1, 0, 1, 1, 0], tf.int32), 2, 2)
    # expert 0 takes patches 1, 4 (slots 0, 1); expert 1 takes 0, 2 (slots 2, 3); 3 overflows.
    assert slot.numpy().tolist() == [2, 0, 3, 4, 1]
    assert source.numpy().tolist() == [1, 4, 0, 2]
    slot, source = dispatch_slots(tf.constant([2, 2, 2, 2], tf.int32), 3, 1)
    assert slot.numpy().tolist() == [2, 3, 3, 3]
    assert source.numpy().tolist() == [4, 4, 0]  # empty slots point past the last patch


def test_gate_priority_keeps_the_patches_the_router_is_surest_of():
    experts = tf.constant([0, 0, 1, 0, 0], tf.int32)
    gates = tf.constant([0.3, 0.9, 0.8, 0.3, 0.6])
    slot, source = dispatch_slots(experts, 2, 2, gates)
    # expert 0: patch 1 (0.9) then 4 (0.6); patches 0 and 3 (0.3, a tie) overflow.
    assert slot.numpy().tolist() == [4, 0, 2, 4, 1]
    assert source.numpy().tolist() == [1, 4, 2, 5]
    slot, _ = dispatch_slots(experts, 2, 3, gates)
    assert slot.numpy().tolist() == [2, 0, 3, 6, 1]  # the tie goes to the lower index


@pytest.mark.parametrize("routing,normalize_gates", [("patch", False), ("token", False),
                                                    ("patch", True)])
def test_sparse_equals_masked_when_no_patch_overflows(routing, normalize_gates):
    x = np.random.default_rng(2).normal(size=(3, 4, 6, 8)).astype(np.float32)
    layer = randomised(MoEFeedForward(num_experts=3, hidden_dim=8, routing=routing,
                                      normalize_gates=normalize_gates), x)
    masked = layer(x).numpy()
    # A batch of one (the exported graph) takes the slot form of the masked dispatch.
    np.testing.assert_allclose(layer(x[:1]).numpy(), masked[:1], rtol=1e-5, atol=1e-5)
    layer.dispatch, layer.capacity_factor = "sparse", 3.0  # capacity = every patch
    np.testing.assert_allclose(layer(x).numpy(), masked, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(x, training=True).numpy(), masked, rtol=1e-5, atol=1e-5)


def test_patches_over_capacity_skip_the_feed_forward():
    x = np.random.default_rng(3).normal(size=(1, 4, 10, 8)).astype(np.float32)
    layer = randomised(MoEFeedForward(num_experts=4, hidden_dim=8, dispatch="sparse",
                                      priority="order"), x)
    router_bias = np.array([20.0, 0.0, 0.0, 0.0], np.float32)  # every patch wants expert 0
    layer.router_kernel.assign(np.zeros_like(layer.router_kernel.numpy()))
    layer.router_bias.assign(router_bias)
    capacity = math.ceil(1.25 * 10 / 4)
    assert layer.capacity(10) == capacity == 4
    out = layer(x).numpy()
    reference = numpy_moe(layer, x)  # every patch through expert 0
    np.testing.assert_allclose(out[:, :, :capacity], reference[:, :, :capacity], rtol=1e-4,
                               atol=1e-5)
    assert np.all(out[:, :, capacity:] == 0)  # the residual alone carries them
    assert np.all(np.abs(reference[:, :, capacity:]) > 0)


def test_capacity_aware_training_drops_the_overflow_and_trains_through_the_slots():
    x = np.random.default_rng(4).normal(size=(2, 4, 10, 8)).astype(np.float32)
    layer = randomised(MoEFeedForward(num_experts=4, hidden_dim=8, priority="order",
                                      train_dispatch="sparse"), x)
    layer.router_kernel.assign(layer.router_kernel.numpy() * 0.1)
    layer.router_bias.assign(np.array([6.0, 0.0, 0.0, 0.0], np.float32))  # all to expert 0
    with tf.GradientTape() as tape:
        out = layer(x, training=True)
        loss = tf.reduce_sum(out ** 2)
    grads = dict(zip(["router", "kernel_in"], tape.gradient(
        loss, [layer.router_kernel, layer.expert_kernel_in])))
    capacity = layer.capacity(10)
    assert np.all(out.numpy()[:, :, capacity:] == 0)  # dropped in training, as on the device
    reference = numpy_moe(layer, x)
    np.testing.assert_allclose(out.numpy()[:, :, :capacity], reference[:, :, :capacity],
                               rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(grads["router"].numpy())) and np.any(grads["router"] != 0)
    assert np.any(grads["kernel_in"].numpy()[0] != 0)  # the expert learns on its slots
    layer.train_dispatch = "masked"  # the default trains every patch
    assert np.all(np.abs(layer(x, training=True).numpy()[:, :, capacity:]) > 0)
    np.testing.assert_allclose(layer(x).numpy(), reference, rtol=1e-4, atol=1e-5)

    model = create_model("mobilevit_v2_moe_050", num_classes=3, input_shape=(64, 64, 3))
    aware = with_dispatch(model, "masked", 1.25, train_dispatch="sparse")
    moes = [l for l in aware._flatten_layers() if isinstance(l, MoEFeedForward)]
    assert [(l.dispatch, l.train_dispatch) for l in moes] == [("masked", "sparse")] * 2
    aware.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    history = aware.fit(images, np.array([0, 1, 2, 0]), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(ValueError, match="train_dispatch|dispatch must be"):
        MoEFeedForward(train_dispatch="dense")


def test_gate_priority_drops_the_patches_with_the_lowest_gates():
    x = np.random.default_rng(5).normal(size=(1, 4, 10, 8)).astype(np.float32)
    layer = randomised(MoEFeedForward(num_experts=4, hidden_dim=8, dispatch="sparse"), x)
    layer.router_kernel.assign(layer.router_kernel.numpy() * 0.2)
    layer.router_bias.assign(np.array([4.0, 0.0, 0.0, 0.0], np.float32))
    routing = layer.route(x)
    assert np.all(routing["experts"].numpy() == 0)  # all patches want expert 0
    gates = routing["gates"].numpy()[0, 0, :, 0]
    kept = np.flatnonzero(np.any(layer(x).numpy()[0] != 0, axis=(0, 2)))
    assert sorted(kept) == sorted(np.argsort(-gates)[:layer.capacity(10)])


def test_with_dispatch_keeps_weights_and_equals_masked_without_overflow():
    model = create_model("mobilevit_v2_moe_050", num_classes=5, input_shape=(64, 64, 3))
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    sparse = with_dispatch(model, "sparse", capacity_factor=4.0)
    np.testing.assert_allclose(sparse(images).numpy(), model(images).numpy(), rtol=1e-4,
                               atol=1e-4)
    assert [l.dispatch for l in sparse._flatten_layers() if isinstance(l, MoEFeedForward)] == [
        "sparse", "sparse"]
    assert all(l.dispatch == "masked" for l in model._flatten_layers()
               if isinstance(l, MoEFeedForward))
    with pytest.raises(ValueError, match="no mixture-of-experts"):
        with_dispatch(create_model("mobilevit_v2_050", num_classes=5, input_shape=(64, 64, 3)))
    with pytest.raises(ValueError, match="top_k=2"):
        MoEFeedForward(num_experts=4, top_k=2, dispatch="sparse")


def test_sparse_int8_moe_costs_about_capacity_factor_feed_forwards_in_tflm():
    positions, patches, dim, hidden, experts = 4, 16, 32, 64, 4
    x = np.random.default_rng(4).normal(size=(32, positions, patches, dim)).astype(np.float32)
    models = {}
    for dispatch in ("masked", "sparse"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((positions, patches, dim), batch_size=1)
        layer = MoEFeedForward(num_experts=experts, hidden_dim=hidden, dispatch=dispatch)
        models[dispatch] = to_tflite(keras.Model(inputs, layer(inputs)), x)
    one_expert = positions * patches * 2 * dim * hidden  # MACs of one expert on every token
    macs = {k: sum(row["macs"] for row in op_table(v)) for k, v in models.items()}
    assert macs["sparse"] <= (1.25 + 0.1) * one_expert, macs
    assert macs["masked"] >= experts * one_expert
    ops = {row["op"] for row in op_table(models["sparse"])}
    assert "GATHER" in ops and "ARG_MAX" in ops and not ops & {"ONE_HOT", "TOPK_V2", "CUMSUM"}
    # TFLM runs every op of the sparse graph (GATHER, ARG_MAX, the int32 slot arithmetic)
    # as LiteRT's reference kernels do: op by op on the same int8 inputs, bit for bit, or at
    # most 1 LSB apart for an op that requantises (one rounding each: int8_ops.ROUNDING_LSB;
    # the experts' FULLY_CONNECTEDs do differ). End to end no LSB count follows, since an
    # expert's second FULLY_CONNECTED grows its first one's difference.
    scale, zero = tflite_io_quantization(models["sparse"])[0]
    assert_ops_agree(models["sparse"], quantize(x[:8], scale, zero))
    tflm = tflm_invoke(models["sparse"], x[:8], dequantize_output=False)
    litert = litert_invoke(models["sparse"], x[:8], dequantize_output=False)
    assert tflm.shape == litert.shape == (8, positions, patches, dim)


def test_int8_sparse_and_masked_differ_only_where_a_patch_overflows():
    """Both int8 forms quantise each expert alike: bit-identical when every patch fits."""
    positions, patches, dim = 4, 8, 16
    x = np.random.default_rng(6).normal(size=(24, positions, patches, dim)).astype(np.float32)
    tflite, int8, real = {}, {}, {}
    for name, factor in (("masked", 1.25), ("roomy", 4.0), ("tight", 1.0)):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((positions, patches, dim), batch_size=1)
        layer = MoEFeedForward(num_experts=4, hidden_dim=16, capacity_factor=factor,
                               dispatch="masked" if name == "masked" else "sparse")
        model = keras.Model(inputs, layer(inputs))
        tflite[name] = to_tflite(model, x)
        int8[name] = tflm_invoke(tflite[name], x[:8], dequantize_output=False)
        real[name] = tflm_invoke(tflite[name], x[:8])
        floats = np.concatenate([model(x[i:i + 1]).numpy() for i in range(8)])
        if name == "tight":
            dropped = np.all(floats == 0, axis=(1, 3))  # [image, patch]: skipped the experts
    np.testing.assert_array_equal(int8["roomy"], int8["masked"])
    assert 0 < dropped.sum() < dropped.size
    # With overflow the calibrated output range moves a little, so compare in real units.
    step = tflite_output_scale(tflite["masked"])
    difference = np.abs(real["tight"] - real["masked"]).max(axis=(1, 3))
    assert np.all(difference[~dropped] <= 3 * step)  # requantisation of the output only
    assert np.all(difference[dropped] > 10 * step)


def test_per_image_routing_runs_only_the_chosen_experts_macs_in_tflm():
    positions, patches, dim, hidden, experts = 4, 16, 32, 64, 4
    rng = np.random.default_rng(4)
    # Each image gets an offset of its own, so that the images spread over the experts.
    x = (rng.normal(size=(32, positions, patches, dim)) +
         rng.normal(size=(32, 1, 1, dim))).astype(np.float32)
    models, tflite = {}, {}
    for dispatch in ("masked", "sparse"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((positions, patches, dim), batch_size=1)
        layer = MoEFeedForward(num_experts=experts, hidden_dim=hidden, dispatch=dispatch,
                               routing="image")
        models[dispatch] = keras.Model(inputs, layer(inputs))
        tflite[dispatch] = to_tflite(models[dispatch], x)
    chosen = models["masked"].layers[1].route(x)["experts"].numpy().ravel()
    assert len(set(chosen)) >= 3, np.bincount(chosen)
    # In float the gather form is the masked form: the same products, summed in another order.
    floats = {k: np.concatenate([m(x[i:i + 1]).numpy() for i in range(len(x))])
              for k, m in models.items()}
    np.testing.assert_allclose(floats["sparse"], floats["masked"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(floats["masked"], numpy_moe(models["masked"].layers[1], x),
                               rtol=1e-4, atol=1e-4)
    one_expert = positions * patches * 2 * dim * hidden
    router = dim * experts
    macs = {k: sum(row["macs"] for row in op_table(v)) for k, v in tflite.items()}
    assert macs["sparse"] == one_expert + router, macs
    assert macs["masked"] >= experts * one_expert
    ops = {row["op"] for row in op_table(tflite["sparse"])}
    assert {"GATHER", "ARG_MAX", "FULLY_CONNECTED"} <= ops and "IF" not in ops
    # TFLM runs the gathered runtime filters as LiteRT's reference kernels do, op by op.
    scale, zero = tflite_io_quantization(tflite["sparse"])[0]
    assert_ops_agree(tflite["sparse"], quantize(x[:8], scale, zero))
    # Both graphs compute the chosen expert with the same ops on the same int8 weights (the
    # masked one gathers it, first of all E, from the stacked weights written twice: the same
    # range, so the same scale) under the same gate; the masked form then adds the other
    # experts' outputs under gates of exactly 0. That sum is requantised at a scale
    # calibrated on the same values: half a step, so at most one output step apart.
    real = {k: tflm_invoke(v, x) for k, v in tflite.items()}
    step = tflite_output_scale(tflite["sparse"])
    assert np.abs(real["sparse"] - real["masked"]).max() <= step * (1 + 1e-6)
    # And neither is farther from float than the other by more than that.
    error = {k: np.abs(real[k] - floats["masked"]).max() for k in real}
    assert abs(error["sparse"] - error["masked"]) <= step * (1 + 1e-6), (error, step)


def tflite_io_quantization(tflite_bytes):
    """((input scale, zero point), (output scale, zero point)) of a .tflite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    return (interpreter.get_input_details()[0]["quantization"],
            interpreter.get_output_details()[0]["quantization"])


def tflite_output_scale(tflite_bytes):
    return tflite_io_quantization(tflite_bytes)[1][0]


def test_cli_export_dispatch_needs_a_keras_model(tmp_path, capsys):
    path = tmp_path / "model.tflite"
    inputs = keras.Input((8, 8, 3))
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    path.write_bytes(to_tflite(keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs)), images))
    assert main(["export", str(path), "--out", str(tmp_path / "fw"), "--dispatch",
                 "sparse"]) == 2
    assert "--dispatch applies when converting a .keras model" in capsys.readouterr().err
    assert not (tmp_path / "fw").exists()
