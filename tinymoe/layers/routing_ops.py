"""The tensor arithmetic of expert routing, in ops TFLite Micro runs: the top-k choice, the
fixed-capacity slots of sparse dispatch (exact int32), and the load-balancing loss."""

import math

from tinymoe.backend import tf


def top_k_mask(probs, k):
    """A 0/1 mask of the ``k`` largest entries along the last axis, ties to the lower index.

    Built from REDUCE_MAX, GREATER_EQUAL, CUMSUM, LESS and MUL only, so it converts for
    TFLite Micro. The cumulative-sum test uses ``< 1.5`` rather than ``== 1`` so that it stays
    right when the count is quantised to int8.

    Example:
        >>> top_k_mask(tf.constant([[0.1, 0.6, 0.3]]), 2).numpy()
        array([[0., 1., 1.]], dtype=float32)
    """
    remaining = probs
    mask = tf.zeros_like(probs)
    for _ in range(k):
        best = tf.reduce_max(remaining, axis=-1, keepdims=True)
        is_best = tf.cast(remaining >= best, probs.dtype)
        first = is_best * tf.cast(tf.cumsum(is_best, axis=-1) < 1.5, probs.dtype)
        mask = mask + first
        remaining = remaining * (1.0 - first) - first  # chosen entries drop below every prob
    return mask


def _equals_range(values, count):
    """``[count, len(values)]`` booleans ``values[n] == i``, as two comparisons and an AND.

    ``tf.equal`` against a range is folded into ONE_HOT by the converter, which TFLite Micro
    lacks; GREATER_EQUAL, LESS_EQUAL and LOGICAL_AND convert as themselves.
    """
    index = tf.constant(list(range(count)), tf.int32)[:, None]
    return tf.logical_and(values[None, :] >= index, values[None, :] <= index)


def _prefix_count(flags):
    """Exclusive prefix sums of an int32 ``[rows, n]`` along the last axis.

    TFLite Micro has no int32 CUMSUM or SUM; this is a Hillis-Steele scan of log2(n) shifted
    int32 ADDs (CONCATENATION, STRIDED_SLICE and ADD, which it has).
    """
    rows, length = flags.shape
    total = flags
    shift = 1
    while shift < length:
        shifted = tf.concat([tf.zeros([rows, shift], tf.int32), total[:, :length - shift]], 1)
        total = total + shifted
        shift *= 2
    return total - flags


def dispatch_slots(experts, num_experts, capacity, gates=None):
    """Where each patch goes in a fixed-capacity top-1 dispatch, in exact int32 arithmetic.

    Args:
        experts: int32 ``[n]``, the chosen expert of each patch.
        num_experts: E.
        capacity: slots per expert.
        gates: None to fill each expert's slots in patch order, or ``[n]`` gate values to
            fill them by decreasing gate (ties in patch order), so that the patches dropped
            at overflow are those the router is least sure of (V-MoE's batch prioritised
            routing, within one image).

    Returns:
        ``(slot, source)``: int32 ``[n]``, the slot of each patch (``E * capacity``, one past
        the last slot, for a patch over its expert's capacity), and int32
        ``[E * capacity]``, the patch in each slot (``n`` for an empty slot).

    Example:
        >>> slot, source = dispatch_slots(tf.constant([1, 0, 1, 1]), 2, 2)
        >>> slot.numpy(), source.numpy()
        (array([2, 0, 3, 4], dtype=int32), array([1, 4, 0, 2], dtype=int32))
    """
    length = experts.shape[0]
    if gates is None:
        chosen = tf.cast(_equals_range(experts, num_experts), tf.int32)  # [E, n]
        before = _prefix_count(chosen)  # patches of the same expert ahead of each one
        position = chosen[0] * before[0]
        for e in range(1, num_experts):
            position = position + chosen[e] * before[e]
    else:
        # ahead[n, m]: patch m shares n's expert and goes first (higher gate, or equal gate
        # and lower index); n's position is the row count, the last inclusive prefix sum.
        earlier = tf.constant([[m < n for m in range(length)] for n in range(length)])
        higher = gates[None, :] > gates[:, None]
        tie = tf.logical_and(tf.equal(gates[None, :], gates[:, None]), earlier)
        ahead = tf.logical_and(tf.equal(experts[None, :], experts[:, None]),
                               tf.logical_or(higher, tie))
        ahead = tf.cast(ahead, tf.int32)
        position = (_prefix_count(ahead) + ahead)[:, length - 1]
    keep = tf.cast(position < capacity, tf.int32)
    slot = keep * (experts * capacity + position) + (1 - keep) * (num_experts * capacity)
    # The patch in each slot: the first patch whose slot matches, else the sentinel column n.
    match = tf.cast(_equals_range(slot, num_experts * capacity), tf.int8)  # [E*C, n]
    sentinel = tf.ones([num_experts * capacity, 1], tf.int8)
    source = tf.argmax(tf.concat([match, sentinel], axis=1), axis=1, output_type=tf.int32)
    return slot, source


def expert_capacity(capacity_factor, num_patches, num_experts):
    """Slots per expert in sparse dispatch: ``ceil(capacity_factor * patches / E)``, at most
    ``patches``.

    Example:
        >>> expert_capacity(1.25, 9, 4)
        3
    """
    return min(num_patches, int(math.ceil(capacity_factor * num_patches / num_experts)))


def load_balancing_loss(probs, mask, top_k):
    """The Switch-Transformer balancing loss ``E * sum_e f_e * p_e``.

    ``f_e`` is the share of routing choices that went to expert e, ``p_e`` its mean router
    probability. It is 1 for perfectly uniform routing and E when one expert takes everything.

    Example:
        >>> probs = tf.fill([1, 1, 8, 4], 0.25)
        >>> float(load_balancing_loss(probs, top_k_mask(probs, 1), 1))
        1.0
    """
    num_experts = probs.shape[-1]
    axes = list(range(len(probs.shape) - 1))
    share = tf.reduce_mean(mask, axis=axes) / float(top_k)
    mean_prob = tf.reduce_mean(probs, axis=axes)
    return float(num_experts) * tf.reduce_sum(share * mean_prob)
