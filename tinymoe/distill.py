"""Knowledge distillation: a frozen teacher's outputs pull a small student along.

A network trained elsewhere (on ImageNet, on iNaturalist birds) knows more than a few
thousand photos can teach a microcontroller model. During ``fit`` the teacher sees exactly
the student's augmented (cropped, flipped, mixed) image, resized to its own input size, and
the student is trained on::

    (1 - alpha) * cross-entropy(labels, student) + alpha * T^2 * KL(teacher_T || student_T)

where ``_T`` are the softmaxes at temperature ``T`` (Hinton et al., arXiv 1503.02531; the
consistent, patient teacher of Beyer et al., arXiv 2106.05237).

A teacher is any of:
- stored views (``.npz``, :mod:`tinymoe.teacher_views`): the teacher's logits computed once
  on every augmented view of a schedule, so that students train at no teacher cost;
- a ``.keras`` classifier of the data's classes (a ``labels.txt`` beside it, if any, must
  name them);
- a registered model name with its weights (``"mobilenet_v2_035:imagenet"``), or a
  ``.tflite`` network (float, uint8 or int8) without a ``labels.txt`` of the data's classes:
  a linear classifier is fitted on its frozen pooled features over the data's train split,
  its regularisation chosen on the val split (:func:`fit_linear_head`), and the teacher's
  logits are that head's.

The teacher runs in the training step (a ``.tflite`` one through LiteRT, on the CPU); the
student is what ``fit`` trains and saves, so callbacks, checkpoints, ``BackupAndRestore`` and
``tf.distribute`` strategies work as without a teacher.
"""

import dataclasses
import os

import numpy as np

from tinymoe.backend import keras, tf

# The teacher's share, chosen on cub100 val (benchmarks/results/frontier.md, seed 0:
# mobilevit_v2_mcu at 128x128 from its Tiny ImageNet weights, the iNaturalist bird teacher,
# 30 epochs: alpha 0.9 gave val top-1 0.798 against 0.782 at 0.5). The temperature is
# Hinton's and Beyer et al.'s 1, not tuned here.
DEFAULT_ALPHA = 0.9
DEFAULT_TEMPERATURE = 1.0
# Inverse regularisation strengths tried for a fitted head (chosen on val).
HEAD_C = (0.01, 0.03, 0.1, 0.3, 1.0)


@dataclasses.dataclass
class LinearHead:
    """A linear classifier on a teacher's features: ``logits = features @ kernel + bias``
    (the features' standardisation folded in).

    Attributes:
        kernel: float32 ``[features, classes]``.
        bias: float32 ``[classes]``.
        c: the inverse regularisation chosen.
        val_top1: its top-1 on the val split (None without one).

    Example:
        >>> head = fit_linear_head(f_train, y_train, f_val, y_val)
        >>> head.c, head.val_top1
        (0.01, 0.967)
    """

    kernel: np.ndarray
    bias: np.ndarray
    c: float
    val_top1: float = None


def fit_linear_head(train_features, train_labels, val_features=None, val_labels=None,
                    num_classes=None, cs=HEAD_C, seed=0):
    """Fits a multinomial logistic regression on standardised features; with val features,
    its inverse regularisation ``C`` is chosen among ``cs`` by val top-1 (never on test).

    Example:
        >>> head = fit_linear_head(f_train, y_train, f_val, y_val)
        >>> logits = f_val @ head.kernel + head.bias
    """
    from sklearn.linear_model import LogisticRegression

    train_features = np.asarray(train_features, np.float64)
    num_classes = int(num_classes or int(np.max(train_labels)) + 1)
    mean = train_features.mean(0)
    scale = train_features.std(0) + 1e-6
    standard = (train_features - mean) / scale
    best = None
    for c in (cs if val_features is not None else cs[-1:]):
        classifier = LogisticRegression(C=c, max_iter=300, random_state=seed)
        classifier.fit(standard, train_labels)
        kernel = np.zeros((standard.shape[1], num_classes))
        bias = np.full(num_classes, -30.0)  # a class without training images: never chosen
        kernel[:, classifier.classes_] = classifier.coef_.T
        bias[classifier.classes_] = classifier.intercept_
        kernel, bias = kernel / scale[:, None], bias - (mean / scale) @ kernel
        head = LinearHead(kernel.astype(np.float32), bias.astype(np.float32), float(c))
        if val_features is None:
            return head
        logits = np.asarray(val_features, np.float64) @ kernel + bias
        head.val_top1 = float(np.mean(np.argmax(logits, 1) == val_labels))
        if best is None or head.val_top1 > best.val_top1:
            best = head
    return best


class Teacher:
    """A frozen network that gives logits for the data's classes on a batch of images.

    Args:
        network: images ``[B, S, S, 3]`` (float pixels in [0, 255], ``S = input_size``) ->
            ``[B, D]`` float: a Keras model, or a Python function (run through
            ``tf.numpy_function``).
        input_size: the side the student's images are resized to for the teacher.
        head: None (the network's outputs are the logits) or a :class:`LinearHead` on them.
        description: what the teacher is, for summaries.

    Example:
        >>> teacher = Teacher(keras_model, 224, description="mobilenet_v2_035 fine-tuned")
        >>> teacher.logits(images)
    """

    def __init__(self, network, input_size, head=None, description="", num_outputs=None):
        self.network, self.input_size, self.head = network, int(input_size), head
        self.description = description
        self.num_outputs = num_outputs
        if head is not None:
            self._kernel = tf.constant(head.kernel)
            self._bias = tf.constant(head.bias)

    @property
    def num_classes(self):
        return int(self.head.bias.shape[0]) if self.head is not None else self.num_outputs

    def features(self, images):
        """The network's outputs (features, or logits without a head) as a float tensor."""
        images = tf.cast(images, tf.float32)
        if images.shape[1] != self.input_size or images.shape[2] != self.input_size:
            images = tf.image.resize(images, (self.input_size, self.input_size))
        if isinstance(self.network, keras.Model):
            return tf.cast(self.network(images, training=False), tf.float32)
        out = tf.numpy_function(lambda x: np.asarray(self.network(x), np.float32), [images],
                                tf.float32, stateful=False)
        out.set_shape([images.shape[0], self.num_outputs if self.head is None
                       else self.head.kernel.shape[0]])
        return out

    def logits(self, images):
        """Logits ``[B, classes]`` for float pixel images ``[B, H, W, 3]``."""
        features = self.features(images)
        if self.head is None:
            return features
        return tf.matmul(features, self._kernel) + self._bias

    def predict(self, images, batch_size=64):
        """NumPy logits of uint8 or float images, batch by batch."""
        return np.concatenate([self.logits(tf.constant(images[i:i + batch_size],
                                                       tf.float32)).numpy()
                               for i in range(0, len(images), batch_size)])

    def describe(self):
        """A JSON-ready summary."""
        out = {"teacher": self.description, "teacher_input_size": self.input_size}
        if self.head is not None:
            out.update(teacher_head_c=self.head.c, teacher_head_val_top1=self.head.val_top1)
        return out


@dataclasses.dataclass(frozen=True)
class Distillation:
    """How a teacher trains a student.

    Args:
        teacher: a :class:`Teacher` with the data's classes.
        alpha: weight of the distillation term (``1 - alpha`` on the labels' cross-entropy;
            1 trains on the teacher alone).
        temperature: softmax temperature of both sides in the distillation term.

    Example:
        >>> fit(model, train, val, TrainConfig(), distillation=Distillation(teacher))
    """

    teacher: Teacher
    alpha: float = DEFAULT_ALPHA
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha weighs the teacher against the labels, in [0, 1]; got "
                             f"{self.alpha}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")

    def loss(self, teacher_logits, student_logits):
        """Per-example ``T^2 * KL(teacher_T || student_T)``."""
        t = self.temperature
        teacher = tf.nn.softmax(teacher_logits / t)
        kl = tf.reduce_sum(teacher * (tf.math.log(teacher + 1e-12)
                                      - tf.nn.log_softmax(student_logits / t)), axis=-1)
        return (t * t) * kl

    def describe(self):
        return {**self.teacher.describe(), "alpha": self.alpha, "temperature": self.temperature}


def _check_classes(teacher_classes, data_classes, where, teacher_names=None, data_names=None):
    """Refuses a teacher whose classes are not the data's, naming the difference."""
    if teacher_classes != len(data_classes if data_names is None else data_names):
        raise ValueError(
            f"The teacher {where} has {teacher_classes} classes but the data has "
            f"{len(data_names or data_classes)}: a teacher must classify the data's classes. "
            f"Give a network to fit a head on instead (a .tflite without labels.txt, or a "
            f"registered model name with its weights, e.g. mobilenet_v2_035:imagenet).")
    if teacher_names is not None and data_names is not None and \
            list(teacher_names) != list(data_names):
        differ = [f"{a!r} vs {b!r}" for a, b in zip(teacher_names, data_names) if a != b]
        raise ValueError(f"The teacher {where} was trained on other classes than the data's "
                         f"({len(differ)} differ, e.g. {', '.join(differ[:3])}).")


def _tflite_network(path, tensor=None):
    """A ``.tflite`` network as a function of float pixel images ``[B, S, S, 3]`` (LiteRT),
    returning the output of ``tensor`` (a name or index; default: the features that feed the
    model's last fully connected or 1x1 convolution).

    uint8 and int8 inputs receive the raw pixels (minus 128 for int8), the convention of
    quantised image models; float inputs receive pixels in [0, 255], as tinymoe's models.

    Returns:
        (function, input_size, output width, the tensor's name).
    """
    from ai_edge_litert.interpreter import Interpreter

    from tinymoe.export import read_tflite

    model_bytes = read_tflite(path)
    probe = Interpreter(model_content=model_bytes)
    details = probe.get_tensor_details()
    index = _feature_tensor(model_bytes, details) if tensor is None else next(
        (d["index"] for d in details if tensor in (d["name"], d["index"],
                                                   str(d["index"]))), None)
    if index is None:
        raise ValueError(f"{path} has no tensor {tensor!r}.")
    model_bytes = _with_output(model_bytes, index)
    interpreter = Interpreter(model_content=model_bytes, num_threads=os.cpu_count() or 1)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    size = int(source["shape"][1])
    output = next(d for d in interpreter.get_output_details() if d["index"] == index
                  or d["name"] == details[index]["name"])
    width = int(np.prod(output["shape"][1:]))
    state = {"shape": tuple(source["shape"])}

    def run(images):
        images = np.asarray(images, np.float32)
        if images.shape != state["shape"]:  # another batch size, or another image size
            interpreter.resize_tensor_input(source["index"], list(images.shape))
            interpreter.allocate_tensors()
            state["shape"] = images.shape
        if source["dtype"] == np.uint8:
            x = np.clip(np.round(images), 0, 255).astype(np.uint8)
        elif source["dtype"] == np.int8:
            x = (np.clip(np.round(images), 0, 255) - 128).astype(np.int8)
        else:
            x = images.astype(source["dtype"])
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        out = interpreter.get_tensor(output["index"]).reshape(len(images), -1)
        scale, zero = output["quantization"]
        if out.dtype != np.float32:
            out = (out.astype(np.float32) - zero) * (scale or 1.0)
        return out

    return run, size, width, details[index]["name"]


def _feature_tensor(model_bytes, details):
    """The input of the graph's last FULLY_CONNECTED or CONV_2D: a classifier's features."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    codes = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    graph = model.subgraphs[0]
    for op in reversed(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if name in ("FULLY_CONNECTED", "CONV_2D"):
            return int(op.inputs[0])
    raise ValueError("No FULLY_CONNECTED or CONV_2D in the teacher: name its feature tensor.")


def _with_output(model_bytes, index):
    """The model with tensor ``index`` added to the subgraph's outputs."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    outputs = list(model.subgraphs[0].outputs)
    if index not in outputs:
        model.subgraphs[0].outputs = np.array(outputs + [index], np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def load_teacher(spec, data, input_size=None, tensor=None, fit_head=None, progress=True):
    """Builds a :class:`Teacher` for ``data`` (a :class:`tinymoe.data.ImageData`) from a
    ``.keras`` file, a ``.tflite`` file or ``"<registered model>:<weights>"``.

    Args:
        spec: the teacher (see the module docstring).
        data: the training data: the teacher must classify its classes, and a fitted head
            is fitted on its train split and chosen on its val split.
        input_size: the side the teacher sees (default: the teacher's own input; the data's
            for a registered model).
        tensor: for a ``.tflite`` teacher, the feature tensor (name or index).
        fit_head: fit a linear head on the network's features (default: for a registered
            model or a ``.tflite`` without a ``labels.txt`` beside it).

    Raises:
        ValueError: the teacher does not exist, or its classes are not the data's.

    Example:
        >>> teacher = load_teacher("inat_bird.tflite", data)
        >>> teacher.describe()["teacher_head_val_top1"]
    """
    spec = str(spec)
    labels_path = os.path.join(os.path.dirname(spec), "labels.txt")
    if spec.endswith(".npz"):
        from tinymoe.teacher_views import load_views

        views = load_views(spec)
        x_train, _ = data.split("train")
        if views.num_images != len(x_train) or views.logits.shape[-1] != data.num_classes:
            raise ValueError(f"The stored teacher views {spec} are for {views.num_images} "
                             f"training images and {views.logits.shape[-1]} classes; the data "
                             f"has {len(x_train)} and {data.num_classes}.")
        return views
    if spec.endswith(".keras"):
        from tinymoe.pipeline import load_model

        model = load_model(spec)
        size = int(input_size or model.input_shape[1] or data.images.shape[1])
        if fit_head:
            features = keras.Model(model.input, model.layers[-1].input)
            return _fitted(Teacher(features, size, description=spec,
                                   num_outputs=int(features.output_shape[-1])), data, progress)
        names = None
        if os.path.isfile(labels_path):
            from tinymoe.data import read_labels

            names = read_labels(labels_path)
        _check_classes(int(model.output_shape[-1]), data.class_names, spec, names,
                      data.class_names)
        return Teacher(model, size, description=spec, num_outputs=int(model.output_shape[-1]))
    if spec.endswith(".tflite"):
        own_labels = os.path.isfile(labels_path)
        as_classifier = fit_head is False or (fit_head is None and own_labels and tensor is None)
        run, size, width, name = _tflite_network(spec, _output_index(spec) if as_classifier
                                                else tensor)
        teacher = Teacher(run, int(input_size or size), num_outputs=width,
                          description=spec if as_classifier else f"{spec} [{name}]")
        if not as_classifier:
            return _fitted(teacher, data, progress)
        from tinymoe.data import read_labels

        _check_classes(width, data.class_names, spec,
                      read_labels(labels_path) if own_labels else None, data.class_names)
        return teacher
    name, _, weights = spec.partition(":")
    from tinymoe.models import create_model, list_models

    if name not in list_models():
        raise ValueError(f"Teacher {spec!r} is neither a .keras or .tflite file nor a "
                         f"registered model (with its weights, e.g. mobilenet_v2_035:imagenet).")
    size = int(input_size or data.images.shape[1])
    model = create_model(name, num_classes=1, input_shape=(size, size, 3),
                         weights=weights or None)
    features = keras.Model(model.input, model.get_layer("pool").output)
    return _fitted(Teacher(features, size, description=spec,
                           num_outputs=int(features.output_shape[-1])), data, progress)


def _output_index(path):
    from ai_edge_litert.interpreter import Interpreter

    from tinymoe.export import read_tflite

    return Interpreter(model_content=read_tflite(path)).get_output_details()[0]["index"]


def _fitted(network_teacher, data, progress=True):
    """``network_teacher`` with a linear head fitted on its features over the train split,
    chosen on the val split."""
    from tqdm.auto import tqdm

    splits = {}
    for split in ("train", "val"):
        images, labels = data.split(split)
        starts = range(0, len(images), 64)
        chunks = [network_teacher.features(tf.constant(images[i:i + 64], tf.float32)).numpy()
                  for i in tqdm(starts, desc=f"teacher features ({split})", unit="batch",
                                disable=not progress)]
        splits[split] = (np.concatenate(chunks) if chunks else None, labels)
    if splits["train"][0] is None:
        raise ValueError("A teacher's head is fitted on the train split, which is empty.")
    val_features, val_labels = splits["val"]
    head = fit_linear_head(*splits["train"], val_features, val_labels, data.num_classes)
    return Teacher(network_teacher.network, network_teacher.input_size, head,
                   network_teacher.description, network_teacher.num_outputs)
