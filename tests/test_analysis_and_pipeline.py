import json
import os

import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.analysis import affinity_matrix, analyze, expert_load, paper_affinity, plot_affinity
from tinymoe.diagnosis import expert_divergence, paired_difference, with_mean_experts
from tinymoe.layers import EXPERT_WEIGHTS
from tinymoe.cli import main
from tinymoe.data import ImageData
from tinymoe.files import atomic_path
from tinymoe.layers import MoEFeedForward
from tinymoe.models import create_model
from tinymoe.models.dispatch import moe_layers
from tinymoe.pipeline import load_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_affinity_rows_sum_to_one_and_count_patches():
    experts = np.array([[0, 0, 1, 2], [2, 2, 2, 2], [1, 1, 0, 0]])
    labels = np.array([0, 1, 0])
    matrix = affinity_matrix(experts, labels, num_classes=3, num_experts=3)
    np.testing.assert_allclose(matrix[0], [4 / 8, 3 / 8, 1 / 8])
    np.testing.assert_allclose(matrix[1], [0, 0, 1])
    np.testing.assert_array_equal(matrix[2], [0, 0, 0])  # a class without images
    np.testing.assert_allclose(matrix[:2].sum(axis=1), 1.0)
    np.testing.assert_allclose(expert_load(experts, 3), [4 / 12, 3 / 12, 5 / 12])


def test_paper_affinity_sharpens_and_zeroes_small_scores():
    probs = np.array([[[0.5, 0.3, 0.2], [0.4, 0.35, 0.25]],   # class 0: expert 0 twice
                      [[0.1, 0.6, 0.3], [0.1, 0.2, 0.7]]])    # class 1: experts 1 and 2
    matrix = paper_affinity(probs, np.array([0, 1]), num_classes=2)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 0.5, 0.5]], atol=1e-6)
    soft = paper_affinity(probs, np.array([0, 1]), 2, temperature=1.0, threshold=0.3)
    assert soft[0, 0] == pytest.approx(0.45) and soft[0, 2] == 0.0


@pytest.fixture(scope="module")
def moe_model():
    return create_model("mobilevit_v2_moe_050", num_classes=3, input_shape=(64, 64, 3))


def test_analyze_gives_matrices_load_and_patch_layout(moe_model, tmp_path):
    images, labels = synthetic_images(6, 64, 3)
    results = analyze(moe_model, images, labels, num_classes=3)
    stage4 = results["stage4_mvit/transformer_3"]  # 64x64: stage 4 map 4x4 -> 2x2 patches
    assert stage4["affinity"].shape == (3, 4)
    np.testing.assert_allclose(stage4["affinity"].sum(axis=1), 1.0)
    assert stage4["experts"].shape == (6, 2, 2) and stage4["patch_pixels"] == 32
    assert stage4["load"].sum() == pytest.approx(1.0)
    path = plot_affinity(stage4["affinity"], ["a", "b", "c"], str(tmp_path / "aff.png"))
    assert open(path, "rb").read(8) == PNG_SIGNATURE


def test_expert_divergence_and_mean_experts_on_constructed_experts(moe_model):
    """Experts set to known vectors: expert e is (e + 1) * v for e < 2 and -v for the rest,
    so cosines are exactly +-1, and the mean of the 4 experts is (1 + 2 - 1 - 1) / 4 * v."""
    moe = moe_layers(moe_model)["stage5_mvit/transformer_2"]
    saved = {name: getattr(moe, name).numpy() for name in EXPERT_WEIGHTS}
    rng = np.random.default_rng(0)
    base = {name: rng.normal(size=value.shape[1:]) for name, value in saved.items()}
    scales = np.array([1.0, 2.0, -1.0, -1.0])
    for name, value in base.items():
        getattr(moe, name).assign((scales.reshape(-1, *[1] * value.ndim) * value)
                                  .astype(np.float32))
    try:
        figures = expert_divergence(moe)
        np.testing.assert_allclose(figures["cosine"], np.sign(scales)[:, None]
                                   * np.sign(scales)[None, :], atol=1e-6)
        assert figures["min_cosine"] == pytest.approx(-1.0, abs=1e-6)
        # |s_e v - m v| / |m v| with m = 0.25.
        np.testing.assert_allclose(figures["spread"], np.abs(scales - 0.25) / 0.25, rtol=1e-5)
        averaged = with_mean_experts(moe_model)
        twin = moe_layers(averaged)["stage5_mvit/transformer_2"]
        for name, value in base.items():
            np.testing.assert_allclose(getattr(twin, name).numpy(),
                                       np.repeat(0.25 * value[None], 4, axis=0), rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(getattr(moe, name).numpy()[1], 2 * value, rtol=1e-6)
        np.testing.assert_array_equal(twin.router_kernel.numpy(), moe.router_kernel.numpy())
    finally:
        for name, value in saved.items():
            getattr(moe, name).assign(value)


def test_paired_difference_counts_discordant_images():
    a = np.array([1] * 10 + [0] * 5 + [1] * 5, bool)
    b = np.array([0] * 10 + [0] * 5 + [1] * 5, bool)
    result = paired_difference(a, b)
    # Exact two-sided p for 10 against 0: 2 / 2**10.
    assert result == {"difference": 0.5, "only_a": 10, "only_b": 0, "p_value": 2 / 1024,
                      "significant": True}
    close = paired_difference([1, 1, 1, 0, 0], [0, 0, 1, 1, 0])  # 2 against 1: chance
    assert close["only_a"] == 2 and close["only_b"] == 1 and close["p_value"] == 1.0
    # 5 against 0 is p = 2 / 32 = 0.0625: not below 0.05, though |a - b| > 2 sqrt(a + b).
    five = paired_difference([1] * 5, [0] * 5)
    assert five["p_value"] == 0.0625 and not five["significant"]


def test_atomic_path_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["figure.png"]
    with pytest.raises(ValueError, match="is a folder"):
        with atomic_path(str(tmp_path)):
            pass


def test_atomic_path_writes_files_with_the_mode_open_gives(tmp_path):
    """Not mkstemp's private 0600: a new file gets 0666 less the umask, a replaced file
    keeps its mode."""
    old_mask = os.umask(0o022)
    try:
        new = tmp_path / "new.json"
        with atomic_path(str(new)) as tmp:
            open(tmp, "w").write("{}")
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o600)
        with atomic_path(str(kept)) as tmp:
            open(tmp, "w").write("new")
        assert kept.stat().st_mode & 0o777 == 0o600 and kept.read_text() == "new"
    finally:
        os.umask(old_mask)


def test_cli_upcycles_per_image_routing_and_analyzes_it(tmp_path, monkeypatch):
    images, labels = synthetic_images(12, 64, 3)
    data = ImageData(images.astype(np.uint8), labels, np.array(["train"] * 8 + ["val"] * 4),
                     ["a", "b", "c"], np.array([""] * 12))
    monkeypatch.setattr("tinymoe.data.load_dataset", lambda source, size: data)
    create_model("mobilevit_v2_050", num_classes=3, input_shape=(64, 64, 3)).save(
        tmp_path / "dense.keras")
    out = tmp_path / "moe.keras"
    assert main(["upcycle", str(tmp_path / "dense.keras"), "--out", str(out), "--experts",
                 "2", "--layers", "4:-1", "--routing", "image", "--images", "8"]) == 0
    report = json.loads((tmp_path / "moe_upcycle.json").read_text())
    # One whole-image embedding per training image is clustered, not patches or tokens.
    assert sum(report["layers"]["stage4_mvit/transformer_3"]["cluster_sizes"]) == 8
    assert [layer.routing for layer in load_model(str(out))._flatten_layers()
            if isinstance(layer, MoEFeedForward)] == ["image"]
    assert main(["analyze", str(out), "--out", str(tmp_path / "analysis")]) == 0
    analysis = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    load = analysis["layers"]["stage4_mvit/transformer_3"]["load"]
    assert sum(load) == pytest.approx(1.0)
    # Super-classes: the router learns to predict them, and training logs that loss.
    supervised = tmp_path / "supervised.keras"
    assert main(["upcycle", str(tmp_path / "dense.keras"), "--out", str(supervised),
                 "--experts", "2", "--layers", "4:-1", "--routing", "image", "--router",
                 "superclass", "--images", "8"]) == 0
    report = json.loads((tmp_path / "supervised_upcycle.json").read_text())
    assert len(report["layers"]["stage4_mvit/transformer_3"]["superclasses"]) == 3
    assert main(["train", "--model", str(supervised), "--out", str(tmp_path / "trained"),
                 "--epochs", "1", "--batch-size", "4"]) == 0
    log = (tmp_path / "trained" / "log.csv").read_text().splitlines()
    assert "router_loss" in log[0].split(",") and len(log) == 2
    # Its analysis adds what routing by the true super-class would score.
    assert main(["analyze", str(tmp_path / "trained" / "best.keras"), "--out",
                 str(tmp_path / "supervised_analysis")]) == 0
    oracle = json.loads((tmp_path / "supervised_analysis" / "analysis.json").read_text())[
        "experts"]["oracle"]
    assert oracle["images"] == 4 and 0 <= oracle["top1_oracle"] <= 1
    assert set(oracle["router_superclass_top1"]) == {"stage4_mvit/transformer_3"}


def test_cli_upcycle_then_analyze_writes_model_report_and_figures(tmp_path, monkeypatch,
                                                                  capsys):
    """The CLI path on a small untrained dense model and a tiny image folder."""
    images, labels = synthetic_images(12, 64, 3)
    data = ImageData(images.astype(np.uint8), labels, np.array(["train"] * 8 + ["val"] * 4),
                     ["a", "b", "c"], np.array([""] * 12))
    monkeypatch.setattr("tinymoe.data.load_dataset", lambda source, size: data)
    dense = create_model("mobilevit_v2_050", num_classes=3, input_shape=(64, 64, 3))
    dense.save(tmp_path / "dense.keras")
    out = tmp_path / "moe.keras"
    assert main(["upcycle", str(tmp_path / "dense.keras"), "--out", str(out),
                 "--experts", "2", "--layers", "5:-1", "--images", "8"]) == 0
    report = json.loads((tmp_path / "moe_upcycle.json").read_text())
    assert report["router"] == "cluster"
    # Stage 5 at 64x64 has one 2x2 patch per image, fewer than 2 x 2 experts: --routing auto
    # routes it per token, so the 4 tokens of each of the 8 images are clustered.
    assert sum(report["layers"]["stage5_mvit/transformer_2"]["cluster_sizes"]) == 8 * 4
    assert report["reinit"] == 0.0 and report["noise"] == 0.0
    assert main(["analyze", str(out), "--out", str(tmp_path / "analysis"),
                 "--dense", str(tmp_path / "dense.keras")]) == 0
    written = sorted(os.listdir(tmp_path / "analysis"))
    # Experts upcycled without noise are exact copies of the dense feed-forward: the mean
    # of copies is the same weights, so the averaged model gives the same top-1.
    experts = json.loads((tmp_path / "analysis" / "analysis.json").read_text())["experts"]
    layer = experts["layers"]["stage5_mvit/transformer_2"]
    assert layer["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert layer["spread"] == [0.0, 0.0]
    assert layer["distance_to_dense"] == [0.0, 0.0]
    assert experts["top1"] == experts["top1_mean_experts"]
    assert experts["verdict"].startswith("No evidence that the experts differ")
    assert main(["analyze", str(out), "--out", str(tmp_path / "again"),
                 "--dense", str(out)]) == 2
    assert "has experts already" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()  # refused before anything is written
    assert written == ["analysis.json", "stage5_mvit_transformer_2.npz",
                       "stage5_mvit_transformer_2_affinity.png",
                       "stage5_mvit_transformer_2_paper_affinity.png",
                       "stage5_mvit_transformer_2_patches.png"]
    aware = tmp_path / "aware"
    assert main(["train", "--model", str(out), "--out", str(aware), "--epochs", "1",
                 "--batch-size", "4", "--train-dispatch", "sparse", "--capacity-factor",
                 "1.0"]) == 0
    moes = [layer for layer in load_model(str(aware / "best.keras"))._flatten_layers()
            if isinstance(layer, MoEFeedForward)]
    assert [(l.train_dispatch, l.capacity_factor) for l in moes] == [("sparse", 1.0)]
    assert main(["train", "--model", "mobilevit_v2_050", "--out", str(tmp_path / "dense"),
                 "--train-dispatch", "sparse"]) == 2  # no experts to dispatch
    assert main(["upcycle", str(tmp_path / "missing.keras"), "--out", str(out)]) == 2
    assert main(["upcycle", str(tmp_path / "dense.keras"), "--out", str(out),
                 "--layers", "five"]) == 2
    assert main(["upcycle", str(tmp_path / "dense.keras"), "--out", str(out),
                 "--reinit", "2"]) == 2  # a fraction
    assert main(["upcycle", str(tmp_path / "dense.keras"), "--out", str(out),
                 "--expert-dropout", "1"]) == 2  # a rate below 1


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """`make demo` runs `tinymoe demo`: dense -> upcycle -> fine-tune -> figures ->
    capacity-aware fine-tuning -> QAT -> int8 in TFLite Micro at a calibrated capacity ->
    firmware files (minutes)."""
    assert main(["demo", "--out", str(tmp_path), "--dense-epochs", "3", "--moe-epochs", "1"]) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["dense"]["val_accuracy"] > 0.5
    assert summary["moe"]["params"] > summary["dense"]["params"]
    for layer in summary["analysis"]["layers"].values():
        for path in layer["files"]:
            assert os.path.getsize(path) > 0
    assert summary["int8"]["dispatch"] == "sparse" and summary["int8"]["int8_tflm_top1"] > 0.5
    assert (tmp_path / "firmware" / "model_data.cc").stat().st_size > 100_000
    # Capacity-aware fine-tuning, then the capacity calibrated at export and noted.
    assert summary["moe_aware"]["epochs"] == 1
    capacity = summary["int8"]["capacity"]
    assert sorted(capacity["layers"]) == ["stage4_mvit/transformer_3", "stage5_mvit/transformer_2"]
    settings = (tmp_path / "firmware" / "model_settings.h").read_text()
    assert "// Expert capacity calibrated at export:" in settings
    assert f"agreement {capacity['agreement']:.4f}" in settings
