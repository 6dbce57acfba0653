import dataclasses
import os

import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.augment import make_dataset
from tinymoe.backend import keras, tf
from tinymoe.layers import MoEFeedForward, feedforward_weights
from tinymoe.models import MoEConfig, create_model
from tinymoe.pipeline import load_model
from tinymoe.routing import (
    cluster_embeddings, collect_embeddings, router_from_centroids, superclasses, upcycle)
from tinymoe.train import (TrainConfig, compile_for_training, fit, learning_rate_schedule,
                           supervise_routers)


def test_schedule_warms_up_then_decays_by_cosine():
    config = TrainConfig(epochs=10, learning_rate=1e-3, warmup_epochs=2,
                         min_learning_rate_ratio=0.01)
    schedule = learning_rate_schedule(config, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(20)) == pytest.approx(1e-3, rel=1e-3)
    assert float(schedule(60)) < float(schedule(40)) < 1e-3
    assert float(schedule(100)) == pytest.approx(1e-5, rel=1e-2)


def test_resumed_schedule_continues_the_cosine_where_the_checkpoint_stood():
    full = TrainConfig(epochs=10, learning_rate=1e-3, warmup_epochs=2)
    resumed = dataclasses.replace(full, initial_epoch=6, resume_warmup_epochs=0.5)
    base = learning_rate_schedule(full, steps_per_epoch=10)
    schedule = learning_rate_schedule(resumed, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0  # fresh optimizer moments: re-warmed from 0
    # After the 5-step re-warm-up, step k of the resumed run is step 60 + k of the full one.
    for k in (5, 20, 39):
        assert float(schedule(k)) == pytest.approx(float(base(60 + k)), rel=1e-6)
    assert float(schedule(2)) == pytest.approx(0.4 * float(base(62)), rel=1e-6)
    restored = type(schedule).from_config(schedule.get_config())
    assert float(restored(20)) == pytest.approx(float(schedule(20)), rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 4, "initial_epoch": 4}, "initial_epoch"),
    ({"epochs": 4, "save_epochs": (5,)}, "save_epochs"),
    ({"epochs": 4, "initial_epoch": 2, "save_epochs": (2,)}, "save_epochs"),
])
def test_bad_resume_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def tiny_classifier(num_classes=3):
    return keras.Sequential([keras.layers.Input((8, 8, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes)])


def test_dense_run_saves_the_upcycling_checkpoint_and_a_resumed_run_trains_the_rest(tmp_path):
    keras.utils.set_random_seed(0)
    images, labels = synthetic_images(24, 8, 3)
    train = make_dataset(images, labels, 3, batch_size=8, training=True)
    dense = tiny_classifier()
    fit(dense, train, train, TrainConfig(epochs=3, warmup_epochs=0, save_epochs=(2,)),
        out_dir=str(tmp_path / "dense"), verbose=0)
    checkpoint = tmp_path / "dense" / "epoch2.keras"
    assert sorted(os.listdir(tmp_path / "dense")) == ["best.keras", "epoch2.keras", "log.csv"]
    model = keras.models.load_model(checkpoint, compile=False)
    history = fit(model, train, train, TrainConfig(epochs=3, initial_epoch=2, warmup_epochs=0),
                  out_dir=str(tmp_path / "moe"), verbose=0)
    assert len(history.history["loss"]) == 1  # only the third epoch
    assert (tmp_path / "moe" / "log.csv").read_text().splitlines()[1].startswith("2,")
    # 3 steps per epoch, so the resumed run's steps are steps 6-8 of the one schedule; the
    # optimizer reports the rate of the last step it applied: step 8's (re-warm-up over).
    one = learning_rate_schedule(TrainConfig(epochs=3, warmup_epochs=0), steps_per_epoch=3)
    assert int(model.optimizer.iterations) == 3
    assert float(model.optimizer.learning_rate) == pytest.approx(float(one(8)), rel=1e-6)
    with pytest.raises(ValueError, match="out_dir"):
        fit(tiny_classifier(), train, None, TrainConfig(epochs=2, save_epochs=(1,)), verbose=0)


def test_loss_falls_on_a_small_learnable_task(tmp_path):
    images, labels = synthetic_images(64, 32, 4)
    train = make_dataset(images, labels, 4, batch_size=16, training=True)
    model = create_model("mobilevit_v2_050", num_classes=4, input_shape=(32, 32, 3))
    config = TrainConfig(epochs=4, learning_rate=2e-3, warmup_epochs=0.5, label_smoothing=0.0)
    history = fit(model, train, train, config, out_dir=str(tmp_path), verbose=0,
                  run_eagerly=True)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert os.path.isfile(tmp_path / "best.keras")
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch") and len(log) == 5


def separated_groups(num_groups, per_group, dim, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4.0, (num_groups, dim))
    groups = np.repeat(np.arange(num_groups), per_group)
    return (centres[groups] + rng.normal(0, 0.5, (len(groups), dim))).astype(np.float32), groups


def test_clustered_router_sends_each_group_to_its_own_expert():
    experts, dim = 4, 16
    embeddings, groups = separated_groups(experts, 150, dim)
    centroids, sizes = cluster_embeddings(embeddings, experts, "ward", max_samples=400)
    assert sorted(sizes) == [100, 100, 100, 100] or sizes.sum() == 400
    kernel, bias, temperature = router_from_centroids(centroids, embeddings)
    assert temperature > 0
    layer = MoEFeedForward(num_experts=experts, hidden_dim=8, routing="patch")
    tokens = np.repeat(embeddings[None, None], 4, axis=1)  # [1, P=4, N, d]: patch mean = row
    layer(tokens)
    layer.router_kernel.assign(kernel)
    layer.router_bias.assign(bias)
    chosen = layer.route(tokens)["experts"].numpy()[0, 0, :, 0]  # before any fine-tuning
    owners = []
    for g in range(experts):
        counts = np.bincount(chosen[groups == g], minlength=experts)
        assert counts.max() / counts.sum() >= 0.95, counts
        owners.append(int(counts.argmax()))
    assert sorted(owners) == list(range(experts))  # one expert per group


@pytest.fixture(scope="module")
def dense():
    keras.utils.set_random_seed(0)
    images, labels = synthetic_images(32, 64, 3, seed=2)
    model = create_model("mobilevit_v2_050", num_classes=3, input_shape=(64, 64, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    model.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    return model, images


@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_model_equals_dense_at_step_zero_with_renormalised_gates(dense, top_k):
    model, images = dense
    config = MoEConfig(num_experts=4, top_k=top_k, layers=((4, -1), (5, 0)),
                       normalize_gates=True)
    moe, report = upcycle(model, config, images[:16])
    assert set(report.layers) == {"stage4_mvit/transformer_3", "stage5_mvit/transformer_0"}
    np.testing.assert_allclose(moe(images, training=False).numpy(),
                               model(images, training=False).numpy(), rtol=1e-4, atol=1e-4)


def test_per_image_upcycling_clusters_one_embedding_per_image(dense):
    model, images = dense
    config = MoEConfig(num_experts=2, layers=((5, -1),), routing="image",
                       normalize_gates=True)
    moe, report = upcycle(model, config, images[:16])
    key = "stage5_mvit/transformer_2"
    assert report.layers[key]["embeddings"] == 16  # the mean of each image's tokens
    assert sum(report.layers[key]["cluster_sizes"]) == 16
    layer = moe.get_layer("stage5_mvit").transformer[2].ffn
    assert layer.routing == "image"
    experts = layer.route(collect_embeddings(model, images[:4], [key], "token")[key].reshape(
        4, 4, -1, layer.router_kernel.shape[0]))["experts"]
    assert experts.shape == (4, 1, 1, 1)
    # Top-1 with renormalised gates and experts copied: the dense model, whatever the router.
    np.testing.assert_allclose(moe(images, training=False).numpy(),
                               model(images, training=False).numpy(), rtol=1e-4, atol=1e-4)


def test_superclasses_group_the_classes_whose_images_lie_together():
    rng = np.random.default_rng(0)
    # Six classes: 0, 2, 4 around one point, 1, 3, 5 around another far away.
    centres = np.where(np.arange(6)[:, None] % 2 == 0, 0.0, 10.0) + rng.normal(0, 0.3, (6, 8))
    labels = np.repeat(np.arange(6), 20)
    embeddings = centres[labels] + rng.normal(0, 0.3, (120, 8))
    table, centroids = superclasses(embeddings, labels, num_experts=2)
    assert len(set(table[0::2])) == len(set(table[1::2])) == 1 and table[0] != table[1]
    np.testing.assert_allclose(centroids[table[0]], embeddings[labels % 2 == 0].mean(0),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="2 classes among the images cannot form 3"):
        superclasses(embeddings[:40], labels[:40], num_experts=3)


def test_superclass_upcycling_keeps_the_classes_groups_in_the_saved_model(dense, tmp_path):
    model, images = dense
    labels = np.arange(16) % 3
    config = MoEConfig(num_experts=2, layers=((5, -1),), routing="image")
    moe, report = upcycle(model, config, images[:16], router="superclass", labels=labels)
    key = "stage5_mvit/transformer_2"
    groups = report.layers[key]["superclasses"]
    assert len(groups) == 3 and set(groups) == {0, 1}  # 3 classes, each expert has some
    moe.save(tmp_path / "moe.keras")
    layer = keras.models.load_model(tmp_path / "moe.keras").get_layer(
        "stage5_mvit").transformer[2].ffn
    assert layer.superclasses == groups and layer.superclass_loss_weight == 0.3
    # Training back-ups (keras.callbacks.BackupAndRestore) are TF checkpoints of it too.
    tf.train.Checkpoint(model=moe).write(str(tmp_path / "backup" / "ckpt"))
    with pytest.raises(ValueError, match="needs per-image routing"):
        upcycle(model, MoEConfig(layers=((5, -1),)), images[:16], router="superclass",
                labels=labels)
    with pytest.raises(ValueError, match="needs the class label of every image"):
        upcycle(model, config, images[:16], router="superclass")
    with pytest.raises(ValueError, match="per-image router; this layer routes per patch"):
        MoEFeedForward(num_experts=2, superclasses=[0, 1])
    with pytest.raises(ValueError, match=r"an expert in \[0, 2\)"):
        MoEFeedForward(num_experts=2, routing="image", superclasses=[0, 2])


def test_supervised_router_logs_and_learns_the_superclass_loss():
    keras.utils.set_random_seed(0)
    images, labels = synthetic_images(16, 64, 4, seed=1)
    model = create_model("mobilevit_v2_050", num_classes=4, input_shape=(64, 64, 3),
                         moe=MoEConfig(num_experts=2, layers=((5, -1),), routing="image"))
    layer = model.get_layer("stage5_mvit").transformer[2].ffn
    assert supervise_routers(model) == []  # no super-classes: nothing to supervise
    layer.superclasses = [0, 1, 0, 1]
    compile_for_training(model, TrainConfig(learning_rate=1e-3, warmup_epochs=0), 8)
    onehot = np.eye(4, dtype=np.float32)[labels]
    model(images, training=True)  # the router's probabilities on this batch, before a step
    probs = layer.last_router_probs.numpy()
    expected = -np.mean(np.log(probs[np.arange(16), np.array([0, 1, 0, 1])[labels]]))
    logs = [model.train_on_batch(images, onehot, return_dict=True) for _ in range(8)]
    # The first step's loss is that of the weights before it: the same float32 math, in a
    # graph instead of eagerly (fused kernels round differently, ~1e-6 relative).
    assert logs[0]["router_loss"] == pytest.approx(expected, rel=1e-4)
    # The router is trained by it: eight steps on one batch lower it.
    assert logs[-1]["router_loss"] < logs[0]["router_loss"]


def test_superclass_oracle_routes_each_image_to_its_label_s_expert_under_the_router_gate():
    from tinymoe.diagnosis import superclass_oracle, with_mean_experts
    from tinymoe.models.tracing import read_routing

    keras.utils.set_random_seed(0)
    images, labels = synthetic_images(12, 64, 4, seed=2)
    model = create_model("mobilevit_v2_050", num_classes=4, input_shape=(64, 64, 3),
                         moe=MoEConfig(num_experts=2, layers=((5, -1),), routing="image"))
    with pytest.raises(ValueError, match="no per-image mixture-of-experts layer with super"):
        superclass_oracle(model, images, labels)
    layer = model.get_layer("stage5_mvit").transformer[2].ffn
    table = np.array([0, 1, 1, 0])
    layer.superclasses = table.tolist()
    # Experts far apart (expert 1's output weights x 20), so that the route shows in logits.
    layer.expert_kernel_out.assign(layer.expert_kernel_out * np.array([1.0, 20.0])[:, None, None])
    # The reference, built without forcing: a copy whose every expert is expert e outputs,
    # whatever the router chooses, the router's gate times expert e, which is what the
    # oracle gives an image of super-class e.
    per_expert = []
    for e in range(2):
        copy = with_mean_experts(model)  # a clone, then every slot set to expert e
        for name in ("expert_kernel_in", "expert_bias_in", "expert_kernel_out",
                     "expert_bias_out"):
            value = getattr(layer, name).numpy()
            getattr(copy.get_layer("stage5_mvit").transformer[2].ffn, name).assign(
                np.repeat(value[e:e + 1], 2, axis=0))
        per_expert.append(copy(images.astype(np.float32), training=False).numpy())
    reference = np.where(table[labels][:, None] == 0, per_expert[0], per_expert[1])
    layer.forced_experts = tf.constant(table[labels], tf.int32)
    forced = model(images.astype(np.float32), training=False).numpy()
    layer.forced_experts = None
    # The same float32 ops on the same values (a one-hot gate picks one expert's output);
    # only the clone's separately traced kernels may round differently, ~1e-6 relative.
    np.testing.assert_allclose(forced, reference, rtol=1e-5, atol=1e-5)
    chosen = read_routing(model, images)["stage5_mvit/transformer_2"]["experts"][:, 0, 0, 0]
    own = model(images.astype(np.float32), training=False).numpy()
    differs = chosen != table[labels]
    assert differs.any() and not differs.all()  # both cases occur on these images
    assert np.abs(forced - own)[differs].max() > 1e-2
    np.testing.assert_array_equal(forced[~differs], own[~differs])  # same gates, same math
    result = superclass_oracle(model, images, labels, batch_size=5)
    assert result["top1_oracle"] == np.mean(np.argmax(reference, axis=1) == labels)
    assert result["top1"] == np.mean(np.argmax(own, axis=1) == labels)
    assert result["router_superclass_top1"] == {"stage5_mvit/transformer_2":
                                                pytest.approx(np.mean(~differs))}
    assert layer.forced_experts is None  # the model is left as it was


def test_without_renormalisation_the_moe_output_is_the_gate_times_the_dense_ffn(dense):
    model, images = dense
    moe, _ = upcycle(model, MoEConfig(num_experts=4, layers=((5, -1),)), images[:16])
    key = "stage5_mvit/transformer_2"
    tokens = collect_embeddings(model, images[:4], [key], routing="token")[key]
    tokens = tokens.reshape(4, 4, -1, tokens.shape[-1])  # [B, P, N, d] again
    moe_ffn = moe.get_layer("stage5_mvit").transformer[2].ffn
    dense_ffn = model.get_layer("stage5_mvit").transformer[2].ffn
    # Experts are copies of the dense feed-forward, so whatever the router, a top-1 MoE
    # without renormalisation outputs gate x dense. The router only has to give gates below
    # 1, or "gate x dense" is just "dense". The clustered one need not: after one epoch the
    # dense model maps these images to almost the same embedding, the centroids are ~1e-4
    # apart, the temperature ~1e-7, and whether float32 softmax rounds every gate to 1.0
    # depends on the float path. So the router is set here: a bias that gives expert 0 the
    # probability 0.6 (logit gap log(0.6 / (0.4 / 3)) = 1.50 over each other expert), plus a
    # random kernel scaled so that no logit moves by more than 0.5 on these patches. The gap
    # stays within 1.50 +- 1, so expert 0 stays on top with a gate 1 / (1 + 3 e^-gap) between
    # 1 / (1 + 3 e^-0.5) = 0.35 and 1 / (1 + 3 e^-2.5) = 0.80.
    patches = tokens.mean(axis=1).reshape(-1, tokens.shape[-1])
    kernel = np.random.default_rng(0).normal(size=moe_ffn.router_kernel.shape)
    kernel *= 0.5 / np.abs(patches @ kernel).max()
    moe_ffn.router_kernel.assign(kernel.astype(np.float32))
    moe_ffn.router_bias.assign(np.log([0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3]).astype(np.float32))
    gates = moe_ffn.route(tokens)["gates"].numpy()  # [B, 1, N, E]
    np.testing.assert_array_equal(np.count_nonzero(gates, axis=-1), 1)  # top-1: one expert
    gates = gates.sum(-1, keepdims=True)  # [B, 1, N, 1]
    assert np.all((gates >= 0.35) & (gates <= 0.81)), gates.ravel()  # the gate really scales
    # float32 both ways, the same products summed in another order: ~1e-6 relative apart.
    np.testing.assert_allclose(moe_ffn(tokens).numpy(), gates * dense_ffn(tokens).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_random_router_baseline_keeps_expert_copies_but_not_the_clustered_router(dense):
    model, images = dense
    config = MoEConfig(num_experts=4, layers=((5, -1),))
    clustered, _ = upcycle(model, config, images[:16], router="cluster")
    random, report = upcycle(model, config, images[:16], router="random")
    a = clustered.get_layer("stage5_mvit").transformer[2].ffn
    b = random.get_layer("stage5_mvit").transformer[2].ffn
    np.testing.assert_array_equal(a.expert_kernel_in.numpy(), b.expert_kernel_in.numpy())
    assert not np.allclose(a.router_kernel.numpy(), b.router_kernel.numpy())
    assert report.router == "random"


def test_drop_upcycling_draws_a_different_half_of_each_experts_hidden_units_afresh(dense):
    model, images = dense
    moe, _ = upcycle(model, MoEConfig(num_experts=4, layers=((5, -1),)), images[:8],
                     router="random", reinit=0.5)
    layer = moe.get_layer("stage5_mvit").transformer[2].ffn
    dense_ffn = model.get_layer("stage5_mvit").transformer[2].ffn
    kernel_in, bias_in, kernel_out, bias_out = feedforward_weights(dense_ffn)
    hidden = bias_in.shape[0]
    subsets = []
    for e in range(4):
        # A hidden unit is kept whole (its input column, bias and output row equal the
        # dense ones) or drawn whole; exactly half are drawn.
        kept_in = (layer.expert_kernel_in.numpy()[e] == kernel_in).all(axis=0)
        kept_bias = layer.expert_bias_in.numpy()[e] == bias_in
        kept_out = (layer.expert_kernel_out.numpy()[e] == kernel_out).all(axis=1)
        np.testing.assert_array_equal(kept_in, kept_bias)
        np.testing.assert_array_equal(kept_in, kept_out)
        assert (~kept_in).sum() == hidden // 2
        subsets.append(frozenset(np.flatnonzero(~kept_in)))
        np.testing.assert_array_equal(layer.expert_bias_out.numpy()[e], bias_out)
        # Drawn from the dense weight's statistics: over d x h/2 samples the mean is within
        # 5 standard errors, the spread within 10% (its standard error, 1/sqrt(2n), is
        # under 1% for these n).
        fresh = layer.expert_kernel_in.numpy()[e][:, ~kept_in]
        assert abs(fresh.mean() - kernel_in.mean()) < 5 * kernel_in.std() / np.sqrt(fresh.size)
        assert abs(fresh.std() / kernel_in.std() - 1) < 0.1
    assert len(set(subsets)) == 4  # a different subset per expert


def test_expert_dropout_reaches_the_upcycled_layers_and_survives_saving(dense, tmp_path):
    model, images = dense
    moe, _ = upcycle(model, MoEConfig(num_experts=2, layers=((5, -1),), expert_dropout=0.3),
                     images[:8], router="random")
    moe.save(tmp_path / "moe.keras")
    layer = load_model(str(tmp_path / "moe.keras")).get_layer("stage5_mvit").transformer[2].ffn
    assert layer.expert_dropout == 0.3


def test_upcycle_refuses_what_it_cannot_do(dense):
    model, images = dense
    with pytest.raises(ValueError, match="expert_hidden_dim must be None or 256"):
        upcycle(model, MoEConfig(layers=((5, -1),), expert_hidden_dim=64), images[:8])
    with pytest.raises(ValueError, match="router must be one of"):
        upcycle(model, MoEConfig(), images[:8], router="kmeans")
    with pytest.raises(ValueError, match="reinit is a fraction"):
        upcycle(model, MoEConfig(layers=((5, -1),)), images[:8], reinit=1.5)
    with pytest.raises(ValueError, match=r"expert_dropout is a dropout rate in \[0, 1\)"):
        MoEConfig(expert_dropout=-0.1)
    moe, _ = upcycle(model, MoEConfig(layers=((5, -1),)), images[:8])
    with pytest.raises(ValueError, match="already has experts"):
        upcycle(moe, MoEConfig(layers=((5, -1),)), images[:8])


def test_two_runs_with_one_seed_give_the_same_model_and_another_seed_does_not(tmp_path):
    """train_run(seed=...) seeds initialisation, shuffling and augmentation. The tests run
    with TensorFlow's deterministic kernels (conftest, as `tinymoe train --seed` does), so
    the same seed on the same machine must give the same logits bit for bit: tolerance 0."""
    from tinymoe.augment import AugmentConfig
    from tinymoe.data import load_dataset
    from tinymoe.evaluation import keras_logits
    from tinymoe.pipeline import train_run

    data = load_dataset("digits", 32, progress=False)
    keep = np.concatenate([np.flatnonzero(data.splits == s)[:n]
                           for s, n in (("train", 96), ("val", 32))])
    data.images, data.labels = data.images[keep], data.labels[keep]
    data.splits, data.paths = data.splits[keep], data.paths[keep]
    config = TrainConfig(epochs=1, batch_size=32, warmup_epochs=0)
    augment = AugmentConfig(crop=True, flip=False)
    logits = []
    for run, seed in enumerate((7, 7, 8)):
        keras.utils.set_random_seed(run)  # whatever came before: the seed decides
        model, _ = train_run("mobilevit_v2_mcu", data, str(tmp_path / f"run{run}"), config,
                             augment, verbose=0, seed=seed)
        logits.append(keras_logits(model, data.images[-32:]))
    np.testing.assert_array_equal(logits[0], logits[1])
    assert np.max(np.abs(logits[0] - logits[2])) > 1e-3


def test_a_resumed_run_draws_batches_of_its_own_not_its_checkpoints(tmp_path, monkeypatch):
    """An upcycled MoE resumed at epoch N must not replay, as epochs N+1..., the shuffle
    order and augmentation of the epochs its dense checkpoint trained on (with one seed for
    both runs it did: its first epoch scored 0.24 train top-1 on batches the checkpoint had
    just seen). The first batch of each run is recorded where train_run builds it."""
    from tinymoe import pipeline
    from tinymoe.data import ImageData
    from tinymoe.train import stream_seed

    images, labels = synthetic_images(24, 8, 3)
    data = ImageData(images.astype(np.uint8), labels, np.array(["train"] * 24), ["a", "b", "c"],
                     np.array([""] * 24))
    first = {}

    def recording(*args, **kwargs):
        dataset = make_dataset(*args, **kwargs)
        if kwargs.get("training"):
            first[len(first)] = next(iter(dataset))[1].numpy().argmax(1)
        return dataset

    monkeypatch.setattr(pipeline, "make_dataset", recording)
    for start in (0, 1):
        config = TrainConfig(epochs=2, initial_epoch=start, batch_size=24, warmup_epochs=0)
        pipeline.train_run(tiny_classifier(), data, str(tmp_path / f"from{start}"), config,
                           verbose=0, seed=5)
    assert stream_seed(5) == 5 and stream_seed(5, 1) != 5
    # One batch of all 24 images: the same labels, in another order.
    assert sorted(first[0]) == sorted(first[1]) and list(first[0]) != list(first[1])
