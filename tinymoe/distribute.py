"""Where training runs: one device, the replicas of one machine, or several machines
(``tf.distribute`` strategies by name, for :func:`tinymoe.pipeline.train_run`)."""

import os

from tinymoe.backend import tf

DISTRIBUTE = ("none", "mirrored", "multi-worker")


def distribution_strategy(distribute=None):
    """The ``tf.distribute`` strategy that ``distribute`` names.

    Args:
        distribute: None or "none" (the default strategy: one device), "mirrored"
            (``tf.distribute.MirroredStrategy``, one replica per GPU, or per logical CPU
            device on a machine without GPUs), "multi-worker"
            (``tf.distribute.MultiWorkerMirroredStrategy``: one process per machine, the
            cluster and this process's place in it read from the ``TF_CONFIG`` environment
            variable; create it before any other TensorFlow work in the process), or a
            ``tf.distribute.Strategy``.

    Raises:
        ValueError: an unknown name, or "multi-worker" without a usable ``TF_CONFIG``.

    Example:
        >>> distribution_strategy("mirrored").num_replicas_in_sync
        2
    """
    if isinstance(distribute, tf.distribute.Strategy):
        return distribute
    if distribute in (None, "none"):
        return tf.distribute.get_strategy()
    if distribute == "multi-worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if distribute != "mirrored":
        raise ValueError(f"Unknown distribution {distribute!r}; choose one of {DISTRIBUTE}.")
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def _check_tf_config():
    """Refuses a missing or malformed ``TF_CONFIG`` before TensorFlow waits on a cluster."""
    import json

    text = os.environ.get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise ValueError(f"--distribute multi-worker reads the cluster from the TF_CONFIG "
                         f"environment variable, which is not set; on each machine set e.g. "
                         f"{example} with its own index.")
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        index = int(config["task"]["index"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"TF_CONFIG is not of the form {example}: {text!r}") from None
    if not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG's task index {index} is not one of the "
                         f"{len(workers)} workers it lists.")


def is_chief(strategy=None):
    """Whether this process writes the run's files: always, except on a multi-worker run's
    workers other than the first (index 0, the chief).

    Example:
        >>> is_chief(distribution_strategy("none"))
        True
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())
