"""Image data for tinymoe: image-folder trees, an optional split file, and a built-in default.

Images are decoded and resized once, in memory, as uint8 (cub100 at 128x128 is about 290 MB);
a file that cannot be decoded is skipped and counted in one warning. ``make_dataset`` turns
arrays into batched ``tf.data`` pipelines with optional keras-cv augmentation.
"""

import csv
import dataclasses
import os
import warnings
import zlib

import numpy as np

from tinymoe.backend import tf
from tinymoe.files import atomic_path
from tinymoe.progress import progress_bar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
_LISTED = 10  # unreadable files named in the warning


@dataclasses.dataclass
class ImageData:
    """Images of one dataset, decoded and resized, with their split.

    Attributes:
        images: uint8 ``[N, H, W, 3]``.
        labels: int32 ``[N]``, indices into ``class_names``.
        splits: ``[N]`` strings, "train", "val" or "test".
        class_names: class names in label order (sorted folder names).
        paths: ``[N]`` source file paths ("" for built-in data).
        hashed_splits: the splits were assigned by a hash of each path (a folder without a
            split file), not given with the data.

    Example:
        >>> data = load_dataset("digits", 32)
        >>> x_train, y_train = data.split("train")
    """

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: list
    paths: np.ndarray
    hashed_splits: bool = False

    def split(self, name):
        """``(images, labels)`` of one split."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; choose one of {SPLITS}.")
        keep = self.splits == name
        return self.images[keep], self.labels[keep]

    @property
    def num_classes(self):
        return len(self.class_names)


def warn_if_normalised(images, where):
    """Warns, in plain words, when float images look scaled to [0, 1].

    tinymoe models take pixel values in [0, 255] (their first layer divides by 255), as the
    data loaders give them. Images already divided by 255 reach the model as near-black
    pictures: it still runs, with wrong answers. Integer images are never flagged, nor
    all-zero ones.

    Args:
        images: array-like ``[N, H, W, C]`` (a tensor or a dataset is not read).
        where: what received them, for the message (e.g. "to_tflite").

    Returns:
        True if it warned.

    Example:
        >>> warn_if_normalised(x / 255.0, "evaluate")  # UserWarning: ... [0, 255] ...
        True
    """
    if not isinstance(images, np.ndarray) or not np.issubdtype(images.dtype, np.floating):
        return False
    if not images.size:
        return False
    low, high = float(np.min(images)), float(np.max(images))
    if not (0.0 < high <= 1.0 and low >= -1.0):
        return False
    warnings.warn(f"{where}: the images' values lie in [{low:.3g}, {high:.3g}], which looks "
                  f"normalised; tinymoe models take pixel values in [0, 255] (they divide by "
                  f"255 themselves). Multiply the images by 255, or pass the uint8 pixels.",
                  UserWarning, stacklevel=3)
    return True


def scan_image_folder(image_dir, split_file=None, val_fraction=0.15, test_fraction=0.15):
    """Lists an image-folder tree (one folder per class) and assigns each file a split.

    Args:
        image_dir: folder with one sub-folder of images per class.
        split_file: optional CSV with columns ``path,species,split``; paths are relative to
            the split file's folder. Without it, each file goes to a split by a stable hash
            of its path relative to ``image_dir``.
        val_fraction, test_fraction: shares used by the hash split.

    Returns:
        (paths, labels, splits, class_names).

    Raises:
        ValueError: no class folders, an empty class folder, a split file that names a
            missing file or an unknown class or split.

    Example:
        >>> paths, labels, splits, class_names = scan_image_folder("photos/")
    """
    if not os.path.isdir(image_dir):
        raise ValueError(f"Image folder {image_dir!r} does not exist.")
    class_names = sorted(d for d in os.listdir(image_dir)
                         if os.path.isdir(os.path.join(image_dir, d)))
    if not class_names:
        raise ValueError(f"Image folder {image_dir!r} has no class folders.")
    files = {}
    for name in class_names:
        folder = os.path.join(image_dir, name)
        found = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise ValueError(f"Class folder {folder!r} has no images ({', '.join(IMAGE_EXTENSIONS)}).")
        files[name] = [os.path.join(folder, f) for f in found]
    index = {name: i for i, name in enumerate(class_names)}
    if split_file is None:
        paths = [p for name in class_names for p in files[name]]
        labels = [index[name] for name in class_names for _ in files[name]]
        splits = [_hash_split(os.path.relpath(p, image_dir), val_fraction, test_fraction)
                  for p in paths]
    else:
        paths, labels, splits = _read_split_file(split_file, index)
    return (np.asarray(paths), np.asarray(labels, np.int32), np.asarray(splits), class_names)


def _hash_split(relative_path, val_fraction, test_fraction):
    position = (zlib.crc32(relative_path.encode("utf-8")) % 10_000) / 10_000
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"


def _read_split_file(split_file, class_index):
    base = os.path.dirname(os.path.abspath(split_file))
    paths, labels, splits, missing = [], [], [], []
    with open(split_file, newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"path", "species", "split"} <= set(reader.fieldnames or ()):
            raise ValueError(f"Split file {split_file!r} needs the columns path,species,split; "
                             f"it has {reader.fieldnames}.")
        for line, row in enumerate(reader, start=2):
            path = os.path.join(base, row["path"])
            if row["species"] not in class_index:
                raise ValueError(f"{split_file}:{line}: class {row['species']!r} has no folder.")
            if row["split"] not in SPLITS:
                raise ValueError(f"{split_file}:{line}: split {row['split']!r} is not one of "
                                 f"{SPLITS}.")
            if not os.path.isfile(path):
                missing.append(row["path"])
            paths.append(path)
            labels.append(class_index[row["species"]])
            splits.append(row["split"])
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"Split file {split_file!r} names {len(missing)} missing file(s): "
                         f"{shown}")
    return paths, labels, splits


def read_image(path, size):
    """Reads one image file and resizes it to uint8 ``[size, size, 3]`` (antialiased).

    Raises:
        ValueError: naming the file and saying what is wrong ("not a JPEG/PNG/BMP/GIF image
            or truncated", or why it cannot be read).

    Example:
        >>> read_image("photos/wren/1.jpg", 128).shape
        (128, 128, 3)
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        raise ValueError(f"{path}: not a JPEG/PNG/BMP/GIF image or truncated") from None
    image = tf.image.resize(image, (size, size), antialias=True)
    return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def decode_images(paths, size, progress=True):
    """Decodes and resizes image files to uint8 ``[N, size, size, 3]``.

    A file that cannot be read or decoded (truncated, not an image) is skipped; all of them
    are listed, each with what is wrong, in one warning. ``progress``: a bar on a terminal,
    one line when done elsewhere (:func:`tinymoe.progress.progress_bar`).

    Returns:
        (images, kept): the images, and a boolean mask of the paths that decoded.

    Example:
        >>> images, kept = decode_images(paths, size=128)
    """
    images, kept, failed = [], np.zeros(len(paths), bool), []
    for i, path in enumerate(progress_bar(paths, desc="decoding images", unit="img",
                                          disable=not progress)):
        try:
            images.append(read_image(str(path), size))
        except ValueError as error:
            failed.append(str(error))
            continue
        kept[i] = True
    if failed:
        shown = "".join(f"\n  {reason}; skipped" for reason in failed[:_LISTED])
        more = f"\n  ... and {len(failed) - _LISTED} more" if len(failed) > _LISTED else ""
        warnings.warn(f"Skipped {len(failed)} unreadable image(s) of {len(paths)}:{shown}{more}",
                      stacklevel=2)
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, kept


def load_image_folder(image_dir, size, split_file=None, progress=True, **split_kwargs):
    """Scans, decodes and resizes an image-folder tree into :class:`ImageData`.

    Example:
        >>> data = load_image_folder("../shared/data/cub100/images", 128,
        ...                          split_file="../shared/data/cub100/splits.csv")
        >>> x_train, y_train = data.split("train")
    """
    paths, labels, splits, class_names = scan_image_folder(image_dir, split_file,
                                                           **split_kwargs)
    images, kept = decode_images(paths, size, progress)
    return ImageData(images, labels[kept], splits[kept], class_names, paths[kept],
                     hashed_splits=split_file is None)


def load_dataset(source, size, progress=True):
    """Loads ``"digits"`` (the built-in default) or a dataset folder.

    A folder holding ``images/`` and ``splits.csv`` (as cub100 does) uses both; any other
    folder is taken as the image-folder tree itself.

    Example:
        >>> data = load_dataset("../shared/data/cub100", 128)
        >>> data.num_classes
        100
    """
    if source in (None, "digits"):
        return load_digits(size)
    images_dir, split_file = source, None
    if os.path.isdir(os.path.join(source, "images")):
        images_dir = os.path.join(source, "images")
        candidate = os.path.join(source, "splits.csv")
        split_file = candidate if os.path.isfile(candidate) else None
    return load_image_folder(images_dir, size, split_file, progress)


def load_digits(size=32, seed=0):
    """scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), as RGB images.

    Needs no download. Resized to ``size`` with bilinear interpolation, scaled to [0, 255],
    repeated to 3 channels, and split 70/15/15 by a fixed permutation.

    Example:
        >>> data = load_digits(32)
        >>> data.images.shape[1:]
        (32, 32, 3)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    small = (digits.images.astype(np.float32) * (255.0 / 16.0))[..., None]
    resized = tf.image.resize(small, (size, size), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8), 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(images))
    splits = np.empty(len(images), dtype="<U5")
    n_train, n_val = int(0.7 * len(images)), int(0.15 * len(images))
    splits[order[:n_train]] = "train"
    splits[order[n_train:n_train + n_val]] = "val"
    splits[order[n_train + n_val:]] = "test"
    return ImageData(images, digits.target.astype(np.int32), splits,
                     [str(i) for i in range(10)], np.full(len(images), "", dtype="<U1"))


def write_labels(path, class_names):
    """Writes class names, one per line (``labels.txt``), atomically.

    Example:
        >>> write_labels("runs/dense/labels.txt", data.class_names)
    """
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write("".join(f"{name}\n" for name in class_names))


def read_labels(path):
    """Class names from a labels file, one per line (blank lines ignored).

    Example:
        >>> read_labels("runs/opt/labels.txt")[:2]
        ['0', '1']
    """
    if not os.path.isfile(path):
        raise ValueError(f"Labels file {path!r} does not exist.")
    with open(path) as handle:
        names = [line.strip() for line in handle if line.strip()]
    if not names:
        raise ValueError(f"Labels file {path!r} names no class.")
    return names
