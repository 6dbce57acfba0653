"""``tinymoe demo``: the whole job on scikit-learn's digits, end to end."""

import os

from tinymoe.augment import AugmentConfig
from tinymoe.backend import keras
from tinymoe.data import load_dataset
from tinymoe.files import write_json
from tinymoe.pipeline import (CAPACITY_AWARE_FACTOR, analyze_run, optimize_run, train_run,
                              upcycle_run)
from tinymoe.train import TrainConfig


def demo(out_dir="runs/demo", input_size=32, dense_epochs=12, moe_epochs=6, qat_epochs=1,
         verbose=2):
    """The whole job on scikit-learn's digits, in a few minutes on 2 cores.

    Dense MobileViTv2-0.5 -> cluster-initialised MoE (4 experts, top-1) -> fine-tuning ->
    affinity figures -> one epoch of capacity-aware fine-tuning (at
    :data:`CAPACITY_AWARE_FACTOR`) -> quantisation-aware training -> int8 with sparse
    expert dispatch, its capacity calibrated, checked in TFLite Micro -> firmware files
    (``out_dir/firmware``). Returns a summary dict
    and writes everything under ``out_dir``.

    Example:
        >>> summary = demo("runs/demo")
        >>> summary["moe"]["val_accuracy"]
    """
    from tinymoe.models import MoEConfig

    data = load_dataset("digits", input_size)
    augment = AugmentConfig(crop=True, crop_area=(0.7, 1.0), flip=False)
    keras.utils.set_random_seed(0)
    dense_config = TrainConfig(epochs=dense_epochs, batch_size=32, warmup_epochs=1)
    _, dense_summary = train_run("mobilevit_v2_050", data, os.path.join(out_dir, "dense"),
                                 dense_config, augment, verbose)
    moe_path = os.path.join(out_dir, "upcycled.keras")
    moe_config = MoEConfig(num_experts=4, top_k=1, layers=((4, -1), (5, -1)))
    upcycle_run(dense_summary["best"], data, moe_path, moe_config, num_images=512)
    moe_train = TrainConfig(epochs=moe_epochs, batch_size=32, learning_rate=5e-4,
                            warmup_epochs=0.5)
    _, moe_summary = train_run(moe_path, data, os.path.join(out_dir, "moe"), moe_train,
                               augment, verbose)
    analysis = analyze_run(moe_summary["best"], data, os.path.join(out_dir, "analysis"))
    aware_train = TrainConfig(epochs=1, batch_size=32, learning_rate=1e-4, warmup_epochs=0)
    _, aware_summary = train_run(moe_summary["best"], data, os.path.join(out_dir, "moe_aware"),
                                 aware_train, augment, verbose, train_dispatch="sparse",
                                 capacity_factor=CAPACITY_AWARE_FACTOR)
    tflite_bytes, int8_summary = optimize_run(aware_summary["best"], data,
                                              os.path.join(out_dir, "int8"),
                                              qat_epochs=qat_epochs, verbose=verbose)
    from tinymoe.export import CapacityReport, write_firmware

    capacity = int8_summary.get("capacity")
    notes = ([] if capacity is None else ["Expert capacity calibrated at export:",
                                          *CapacityReport(**capacity).lines()])
    write_firmware(tflite_bytes, os.path.join(out_dir, "firmware"), name="digits",
                   labels=data.class_names, arena_bytes=int8_summary["arena_bytes"],
                   notes=notes)
    summary = {"dense": dense_summary, "moe": moe_summary, "moe_aware": aware_summary,
               "analysis": analysis, "int8": int8_summary}
    write_json(os.path.join(out_dir, "demo_summary.json"), summary)
    return summary
