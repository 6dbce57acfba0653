import numpy as np
import pytest

from tinymoe.backend import keras, tf
from tinymoe.layers import MoEFeedForward, load_balancing_loss, top_k_mask


def swish(x):
    return x / (1.0 + np.exp(-x))


def numpy_moe(layer, x):
    """Reference: route each patch (or token, or image), run only its chosen experts, scale
    by gate."""
    w_r, b_r = layer.router_kernel.numpy(), layer.router_bias.numpy()
    w_in, b_in = layer.expert_kernel_in.numpy(), layer.expert_bias_in.numpy()
    w_out, b_out = layer.expert_kernel_out.numpy(), layer.expert_bias_out.numpy()
    batch, positions, patches, dim = x.shape
    out = np.zeros_like(x)
    for b in range(batch):
        for n in range(patches):
            for p in range(positions):
                route_on = {"patch": x[b, :, n].mean(axis=0), "token": x[b, p, n],
                            "image": x[b].mean(axis=(0, 1))}[layer.routing]
                logits = route_on @ w_r + b_r
                probs = np.exp(logits - logits.max())
                probs /= probs.sum()
                chosen = np.argsort(-probs, kind="stable")[: layer.top_k]
                gates = probs[chosen]
                if layer.normalize_gates:
                    gates = gates / gates.sum()
                for e, g in zip(chosen, gates):
                    hidden = swish(x[b, p, n] @ w_in[e] + b_in[e])
                    out[b, p, n] += g * (hidden @ w_out[e] + b_out[e])
    return out


def randomised(layer, x, seed=0):
    """Builds ``layer`` and gives every weight, biases included, random values."""
    layer(x)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                       for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("routing", ["patch", "token", "image"])
def test_top1_output_is_the_chosen_expert_times_its_gate(routing):
    x = np.random.default_rng(1).normal(size=(2, 4, 5, 6)).astype(np.float32)
    layer = randomised(MoEFeedForward(num_experts=4, hidden_dim=8, top_k=1, routing=routing), x)
    np.testing.assert_allclose(layer(x).numpy(), numpy_moe(layer, x), rtol=1e-4, atol=1e-5)


def test_top2_with_renormalised_gates_matches_reference():
    x = np.random.default_rng(2).normal(size=(1, 4, 6, 6)).astype(np.float32)
    layer = randomised(MoEFeedForward(num_experts=3, hidden_dim=8, top_k=2,
                                      normalize_gates=True), x)
    np.testing.assert_allclose(layer(x).numpy(), numpy_moe(layer, x), rtol=1e-4, atol=1e-5)


def test_top_k_equal_to_experts_uses_every_expert():
    probs = tf.constant([[0.1, 0.5, 0.4]])
    np.testing.assert_array_equal(top_k_mask(probs, 3).numpy(), [[1, 1, 1]])


def test_top_k_mask_breaks_ties_to_the_lowest_index():
    probs = tf.constant([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.4, 0.1]])
    np.testing.assert_array_equal(top_k_mask(probs, 1).numpy(), [[1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(top_k_mask(probs, 2).numpy(), [[1, 1, 0, 0], [0, 1, 1, 0]])


def test_patch_routing_sends_the_four_pixels_of_a_patch_together():
    # The four pixels of each patch point at four different experts on their own.
    experts, dim = 4, 4
    x = np.zeros((1, 4, 3, dim), np.float32)
    for p in range(4):
        x[0, p, :, p] = 5.0
    x[0, :, 1, 2] += 3.0  # patch 1 leans towards expert 2 on average
    for routing in ("patch", "token"):
        layer = MoEFeedForward(num_experts=experts, hidden_dim=4, top_k=1, routing=routing)
        layer(x)
        layer.router_kernel.assign(np.eye(dim, experts, dtype=np.float32))
        chosen = layer.route(x)["experts"].numpy()[..., 0]  # [1, 1 or 4, 3]
        if routing == "patch":
            assert chosen.shape == (1, 1, 3)
            assert chosen[0, 0, 1] == 2
        else:
            assert chosen.shape == (1, 4, 3)
            assert sorted(chosen[0, :, 0]) == [0, 1, 2, 3]  # pixels split when routed alone
    # And the output of every pixel of a patch comes from that patch's single expert.
    layer = randomised(MoEFeedForward(num_experts=experts, hidden_dim=4, routing="patch"), x)
    np.testing.assert_allclose(layer(x).numpy(), numpy_moe(layer, x), rtol=1e-4, atol=1e-5)


def test_balancing_loss_is_smallest_for_uniform_routing():
    experts, tokens = 4, 64
    uniform = tf.fill((tokens, experts), 1.0 / experts)
    balanced_mask = tf.constant(np.eye(experts, dtype=np.float32)[np.arange(tokens) % experts])
    collapsed = tf.constant(np.eye(experts, dtype=np.float32)[np.zeros(tokens, int)])
    random = tf.nn.softmax(tf.random.stateless_normal((tokens, experts), seed=(1, 2)) * 3)
    loss_uniform = float(load_balancing_loss(uniform, balanced_mask, 1))
    loss_collapsed = float(load_balancing_loss(collapsed, collapsed, 1))
    loss_random = float(load_balancing_loss(random, top_k_mask(random, 1), 1))
    assert loss_uniform == pytest.approx(1.0)
    assert loss_collapsed == pytest.approx(float(experts))
    assert loss_uniform < loss_random < loss_collapsed


def test_balancing_loss_is_added_in_training_and_weight_zero_disables_it():
    x = np.random.default_rng(3).normal(size=(2, 4, 5, 6)).astype(np.float32)
    layer = MoEFeedForward(num_experts=4, hidden_dim=8, aux_loss_weight=0.5)
    layer(x, training=True)
    assert len(layer.losses) == 1 and float(layer.losses[0]) >= 0.5 - 1e-6
    quiet = MoEFeedForward(num_experts=4, hidden_dim=8, aux_loss_weight=0.0)
    quiet(x, training=True)
    assert not quiet.losses
    # In a model, fit sees it: a collapsed router costs more than a balanced one.
    inputs = keras.Input((4, 5, 6))
    model = keras.Model(inputs, MoEFeedForward(num_experts=4, hidden_dim=8,
                                               aux_loss_weight=1.0)(inputs))
    moe = model.layers[-1]
    moe.router_bias.assign([50.0, 0.0, 0.0, 0.0])
    model(x, training=True)
    assert float(model.losses[0]) == pytest.approx(4.0, rel=1e-3)


def test_route_reports_probabilities_gates_and_experts():
    x = np.random.default_rng(4).normal(size=(3, 4, 5, 6)).astype(np.float32)
    layer = randomised(MoEFeedForward(num_experts=4, hidden_dim=8, top_k=2), x)
    routing = layer.route(x)
    probs, gates, chosen = (routing[k].numpy() for k in ("probs", "gates", "experts"))
    assert probs.shape == gates.shape == (3, 1, 5, 4)
    assert chosen.shape == (3, 1, 5, 2) and chosen.dtype == np.int32
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert ((gates > 0).sum(-1) == 2).all()
    np.testing.assert_array_equal(np.argmax(probs, -1), chosen[..., 0])


@pytest.mark.parametrize("kwargs,message", [
    ({"num_experts": 0}, "num_experts must be at least 1, got 0"),
    ({"num_experts": 4, "top_k": 5}, "top_k must be between 1 and num_experts=4, got 5"),
    ({"num_experts": 4, "top_k": 0}, "got 0"),
    ({"routing": "pixel"}, "routing must be one of .* got 'pixel'"),
    ({"hidden_dim": 0}, "hidden_dim must be at least 1, got 0"),
])
def test_bad_configuration_is_refused_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEFeedForward(**kwargs)


def test_per_image_routing_refuses_int8_simulation_by_name():
    layer = MoEFeedForward(num_experts=2, hidden_dim=8, routing="image", simulate_int8=True,
                           name="experts")
    with pytest.raises(NotImplementedError, match="experts: quantisation-aware training of "
                                                  "per-image routing"):
        layer(tf.zeros([1, 4, 4, 8]))


@pytest.mark.parametrize("routing", ["patch", "image"])
def test_expert_dropout_drops_hidden_units_in_training_only(routing):
    """Identity experts with relu on positive inputs: each expert's hidden units are the
    input itself, so the output is gate * x, and expert dropout (rate 0.5) must leave each
    output value either 0 or exactly twice that (Keras scales kept units by 1 / (1 - rate)).
    Products with 1 and 0 and sums with zeros are exact in float32 under any kernel, so the
    ratio is compared to 1e-6."""
    experts, dim = 2, 8
    x = (np.abs(np.random.default_rng(5).normal(size=(4, 4, 6, dim))) + 0.1).astype(np.float32)
    layer = MoEFeedForward(num_experts=experts, hidden_dim=dim, routing=routing,
                           activation="relu", aux_loss_weight=0.0, expert_dropout=0.5)
    layer(x)
    identities = np.stack([np.eye(dim, dtype=np.float32)] * experts)
    layer.expert_kernel_in.assign(identities)
    layer.expert_kernel_out.assign(identities)
    inference = layer(x).numpy()
    gate = tf.reduce_max(layer.router_probs(x), axis=-1).numpy()[..., None]
    np.testing.assert_allclose(inference, gate * x, rtol=1e-6)  # no dropout at inference
    keras.utils.set_random_seed(0)
    trained = layer(x, training=True).numpy()
    dropped = trained == 0
    np.testing.assert_allclose(trained[~dropped] / inference[~dropped], 2.0, rtol=1e-6)
    # Each of n values is dropped with probability 0.5: the fraction lies within 5 standard
    # errors (0.5 / sqrt(n)) of it.
    assert abs(dropped.mean() - 0.5) < 5 * 0.5 / np.sqrt(dropped.size)


def test_expert_dropout_serialises_and_bad_rates_are_refused():
    layer = MoEFeedForward(num_experts=2, hidden_dim=4, expert_dropout=0.25)
    assert MoEFeedForward.from_config(layer.get_config()).expert_dropout == 0.25
    with pytest.raises(ValueError, match=r"expert_dropout is a dropout rate in \[0, 1\), got 1.0"):
        MoEFeedForward(expert_dropout=1.0)
    with pytest.raises(ValueError, match="expert_dropout applies to masked training"):
        MoEFeedForward(expert_dropout=0.1, train_dispatch="sparse")
