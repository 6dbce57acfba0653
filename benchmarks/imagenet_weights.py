"""Rebuilds Keras Applications' ImageNet MobileNetV2-0.35 weights without Google's storage.

``keras.applications.MobileNetV2(alpha=0.35, weights="imagenet", include_top=False)`` reads
``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5`` from the Keras cache
(``~/.keras/models``, or ``$KERAS_HOME/models``), downloading it when it is missing. Where
that host cannot be reached, this script rebuilds the same file from a public Teachable
Machine export: a Teachable Machine image project trains a small head on a *frozen*
MobileNetV2-0.35 ImageNet backbone, so every ``keras_model.h5`` it exports carries that
backbone under ``model_weights/sequential_<n>/<layer>/<weight>:0``
(``../shared/docs/TEACHERS.md``). Two unrelated exports give the byte-identical file, whose
SHA-256 is checked below. Never commit the exports or the weights file.

    fetch github:A-Knight/TeachableMachine     # the tool library's fetch; prints <mirror>
    git --git-dir=<mirror> show 3cc6a0952aba13a973679c4787516ae544d7752b:keras_model.h5 \
        > /work/data/teachers/tm_a.h5
    python benchmarks/imagenet_weights.py /work/data/teachers/tm_a.h5

Writes the weights file into the Keras cache (``--out`` elsewhere), atomically, and refuses
to leave a file whose SHA-256 differs from the one Keras' own download has.
"""

import argparse
import hashlib
import os
import sys

import tinymoe
from tinymoe.files import atomic_path
from tinymoe.models import get_config
from tinymoe.models.cnn import keras_weights_path



def rebuild(export_path, out_path, alpha=0.35):
    """Copies the backbone arrays of a Teachable Machine export into a Keras Applications
    MobileNetV2 and saves its weights to ``out_path``; returns the SHA-256 of the file."""
    import h5py

    keras = tinymoe.keras
    model = keras.applications.MobileNetV2(alpha=alpha, include_top=False, weights=None,
                                           input_shape=(224, 224, 3))
    with h5py.File(export_path, "r") as export:
        groups = [group for group in export.get("model_weights", {}).values()
                  if "Conv1" in group]  # the backbone's group: sequential_1, _5, ...
        if len(groups) != 1:
            raise ValueError(f"{export_path} is not a Teachable Machine image export (no "
                             f"model_weights/<group>/Conv1).")
        group = groups[0]
        used = set()
        for layer in model.layers:
            if not layer.weights:
                continue
            arrays = []
            for weight in layer.weights:
                short = weight.name.split("/")[-1]  # e.g. "kernel:0"
                key = f"{layer.name}/{short}"
                if key not in group:
                    raise ValueError(f"{export_path} lacks {key}: not a MobileNetV2-{alpha}.")
                array = group[key][()]
                if array.shape != tuple(weight.shape):
                    raise ValueError(f"{key}: {array.shape} in the export, "
                                     f"{tuple(weight.shape)} in the model.")
                arrays.append(array)
                used.add(key)
            layer.set_weights(arrays)
        left = []
        group.visititems(lambda name, item: left.append(name)
                         if hasattr(item, "shape") and name not in used else None)
        if left:
            raise ValueError(f"{len(left)} backbone arrays of the export were not used, e.g. "
                             f"{left[:3]}: not Keras' MobileNetV2-{alpha} layout.")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with atomic_path(out_path) as tmp:
        model.save_weights(tmp + ".h5")
        os.replace(tmp + ".h5", tmp)
    with open(out_path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a Teachable Machine image project's keras_model.h5")
    parser.add_argument("--out", default=None,
                        help="where to write the weights (default: the Keras cache, where "
                             "create_model(..., weights='imagenet') finds them)")
    args = parser.parse_args(argv)
    expected = get_config("mobilenet_v2_035").imagenet_file()
    out = args.out or keras_weights_path(expected.file)
    digest = rebuild(args.export, out)
    if digest != expected.sha256:
        os.remove(out)
        print(f"SHA-256 {digest} differs from {expected.sha256}: removed {out}.",
              file=sys.stderr)
        return 1
    print(f"{out}: SHA-256 {digest} (as Keras' own download)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
