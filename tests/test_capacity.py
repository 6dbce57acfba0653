"""Expert capacity calibrated at export (tinymoe.export.calibrate_capacity)."""

import re

import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.backend import keras
from tinymoe.export import calibrate_capacity, capacity_grid
from tinymoe.layers.routing_ops import expert_capacity
from tinymoe.models import MoEConfig, create_model, moe_layers, read_routing, trace, with_dispatch
from tinymoe.routing import router_from_centroids

KEY = "stage4_mvit/transformer_3"


def test_the_grid_has_one_factor_per_slot_count():
    assert capacity_grid(16, 4) == [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25,
                                     3.5, 3.75, 4.0]
    # 9 patches, 4 experts: 16/9 rounds up to 1.777778, which would give 5 slots.
    for units, experts in ((9, 4), (16, 4), (64, 4), (3, 4)):
        grid = capacity_grid(units, experts)
        slots = [expert_capacity(f, units, experts) for f in grid]
        assert slots == list(range(slots[0], slots[-1] + 1))
        assert expert_capacity(1.0, units, experts) == slots[0]
    assert capacity_grid(1, 4) == [4.0]


@pytest.fixture(scope="module")
def two_expert_model():
    """Two experts in stage 4 of a 64x64 model: a 4x4 map, 4 patches of 4 tokens (the
    least that per-patch routing accepts with 2 experts). Expert outputs are scaled up so
    that a dropped patch changes the logits a lot: dropping must show in the agreement."""
    keras.utils.set_random_seed(0)
    model = create_model("mobilevit_v2_050", num_classes=4, input_shape=(64, 64, 3),
                         moe=MoEConfig(num_experts=2, layers=((4, -1),)))
    layer = moe_layers(model)[KEY]
    assert layer.routing == "patch" and layer.dispatch_units() == 4
    layer.expert_kernel_out.assign(layer.expert_kernel_out * 30.0)
    images, _ = synthetic_images(32, 64, 4)
    return model, images


def test_a_router_that_sends_every_patch_to_one_expert_gets_room_for_all_of_them(
        two_expert_model, capfd):
    model, images = two_expert_model
    layer = moe_layers(model)[KEY]
    layer.router_kernel.assign(np.zeros(layer.router_kernel.shape, np.float32))
    layer.router_bias.assign([4.0, -4.0])
    experts = read_routing(model, images)[KEY]["experts"][..., 0]
    assert np.all(experts == 0)
    capfd.readouterr()
    _, report = calibrate_capacity(model, images, images[:16], progress=True)
    chosen = report.layers[KEY]
    # Factor 1.0 (2 slots) and 1.5 (3) drop patches; only 2.0 (4 slots) holds all four.
    assert [f for f, _ in chosen["tried"]] == [1.0, 1.5, 2.0]
    # The bar counts int8 models and ends full: the masked model, three factors, one check in
    # TFLite Micro (off a terminal, as here, it is one line when done).
    bar = capfd.readouterr().err
    assert "calibrating expert capacity: 5 int8 model in " in bar, bar
    assert all(agreement < 0.98 for _, agreement in chosen["tried"][:2])
    assert chosen["capacity_factor"] == 2.0 and chosen["slots"] == 4
    assert report.reached and report.agreement >= 0.98


def test_per_image_layers_have_no_capacity_only_their_agreement_is_measured():
    from tinymoe.export import op_table, tflm_invoke, to_tflite

    keras.utils.set_random_seed(0)
    model = create_model("mobilevit_v2_050", num_classes=4, input_shape=(64, 64, 3),
                         moe=MoEConfig(num_experts=2, layers=((4, -1),), routing="image"))
    images, _ = synthetic_images(16, 64, 4)
    tflite_bytes, report = calibrate_capacity(model, images, images[:8])
    assert report.layers == {}
    assert {"GATHER", "ARG_MAX"} <= {row["op"] for row in op_table(tflite_bytes)}
    masked = to_tflite(with_dispatch(model, "masked"), images[:8])
    expected = np.mean(np.argmax(tflm_invoke(tflite_bytes, images), 1) ==
                       np.argmax(tflm_invoke(masked, images), 1))
    assert report.agreement == pytest.approx(expected)


def test_a_balanced_router_gets_the_smallest_capacity(two_expert_model):
    model, images = two_expert_model
    # Images whose top half is dark and bottom half bright: the top two patches of the
    # 2x2 patch grid differ from the bottom two in every image.
    images = images.copy()
    images[:, :32] *= 0.2
    images[:, 32:] = 255.0 - 0.2 * images[:, 32:]
    layer = moe_layers(model)[KEY]
    _, infos = trace(model, images)
    patches = infos[KEY]["ffn_input"].mean(axis=1)  # [B, N=4, d], what the router sees
    centroids = np.stack([patches[:, :2].mean(axis=(0, 1)), patches[:, 2:].mean(axis=(0, 1))])
    kernel, bias, _ = router_from_centroids(centroids, patches.reshape(-1, patches.shape[-1]))
    layer.router_kernel.assign(kernel)
    layer.router_bias.assign(bias)
    experts = read_routing(model, images)[KEY]["experts"][:, 0, :, 0]
    assert np.all(experts[:, :2] == 0) and np.all(experts[:, 2:] == 1)  # 2 + 2 per image
    tflite_bytes, report = calibrate_capacity(model, images, images[:16], progress=False)
    assert report.factors == {KEY: 1.0} and report.layers[KEY]["slots"] == 2
    assert report.agreement == 1.0  # nothing dropped: the same predictions as masked
    assert len(report.layers[KEY]["tried"]) == 1
    assert isinstance(tflite_bytes, bytes)


def test_per_layer_factors_reach_each_layer_and_unknown_layers_are_named():
    model = create_model("mobilevit_v2_moe_050", num_classes=3, input_shape=(128, 128, 3))
    keys = list(moe_layers(model))
    assert keys == ["stage4_mvit/transformer_3", "stage5_mvit/transformer_2"]
    # At 128x128 stage 5 has 4 patches: "auto" routes its 16 tokens one by one.
    assert [moe_layers(model)[k].dispatch_units() for k in keys] == [16, 16]
    sparse = with_dispatch(model, "sparse", {keys[0]: 2.0, keys[1]: 1.25})
    assert [layer.capacity_factor for layer in moe_layers(sparse).values()] == [2.0, 1.25]
    assert [layer.dispatch for layer in moe_layers(sparse).values()] == ["sparse", "sparse"]
    restored = keras.Model.from_config(sparse.get_config())
    assert [layer.capacity_factor for layer in moe_layers(restored).values()] == [2.0, 1.25]
    with pytest.raises(ValueError, match=r"No MoE layer \['stage3_mvit/transformer_0'\]"):
        with_dispatch(model, "sparse", {"stage3_mvit/transformer_0": 2.0})


def test_cli_export_calibrates_capacity_by_default_and_notes_it(tmp_path, capsys):
    from tinymoe.cli import main

    keras.utils.set_random_seed(0)
    # 32x32 digits: stage 4 is 2x2, one patch, so "auto" routes its 4 tokens one by one.
    model = create_model("mobilevit_v2_050", num_classes=10, input_shape=(32, 32, 3),
                         moe=MoEConfig(num_experts=2, layers=((4, -1),)))
    assert moe_layers(model)[KEY].routing == "token"
    path = tmp_path / "moe.keras"
    model.save(path)
    assert main(["export", str(path), "--out", str(tmp_path / "fw")]) == 0
    out = capsys.readouterr().out
    settings = (tmp_path / "fw" / "model_settings.h").read_text()
    line = re.search(r"// stage4_mvit/transformer_3: capacity factor ([\d.]+), (\d) slots per "
                     r"expert \(4 tokens, 2 experts\)", settings)
    assert line and line.group(0)[3:] in out
    assert float(line.group(1)) in capacity_grid(4, 2)
    assert re.search(r"// sparse/masked int8 top-1 agreement [\d.]+ on \d+ images", settings)
    assert main(["export", str(path), "--out", str(tmp_path / "fixed"),
                 "--capacity-factor", "1.5"]) == 0
    assert "capacity factor" not in (tmp_path / "fixed" / "model_settings.h").read_text()
    with pytest.raises(SystemExit):
        main(["export", str(path), "--out", str(tmp_path / "bad"), "--capacity-factor", "lots"])
    assert "expected 'auto' or a number, got 'lots'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
