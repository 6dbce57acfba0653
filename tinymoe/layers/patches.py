"""Patch unfold (SPACE_TO_DEPTH) and fold (4-D transposes), tensors at 4-D or less.

The usual unfold (reshape to 6-D, permute) cannot run in TFLite Micro, whose TRANSPOSE takes
at most 5 dimensions. Here a feature map ``[B, H, W, C]`` becomes tokens ``[B, P, N, C]``:
P = patch_size**2 pixel positions inside a patch, N = number of patches. Attention mixes the
N patches at each pixel position (as in MobileViTv2); per-patch routing sends the P pixels
of one patch to the same expert.
"""

from tinymoe.backend import keras, register, tf
from tinymoe.layers.building import ScopedBuildMixin


def patch_grid(height, width, patch_size, pad):
    """Returns the padded (height, width) that a patch grid of ``patch_size`` covers.

    Raises:
        ValueError: the size is not a multiple of ``patch_size`` and ``pad`` is False.

    Example:
        >>> patch_grid(6, 6, 2, pad=True)
        (6, 6)
        >>> patch_grid(3, 3, 2, pad=True)
        (4, 4)
    """
    padded_h = -(-height // patch_size) * patch_size
    padded_w = -(-width // patch_size) * patch_size
    if (padded_h, padded_w) != (height, width) and not pad:
        raise ValueError(
            f"A {height}x{width} feature map cannot be cut into {patch_size}x{patch_size} "
            f"patches; use an input size whose feature maps are multiples of {patch_size}, "
            "or pad=True.")
    return padded_h, padded_w


PAD_MODES = ("zeros", "edge")


def check_pad_mode(pad_mode):
    """Returns ``pad_mode`` if it is one of :data:`PAD_MODES`, else raises ``ValueError``.

    Example:
        >>> check_pad_mode("edge")
        'edge'
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}.")
    return pad_mode


# Saved configs without "pad_mode" predate it: their models were trained with zero padding.
_SAVED_PAD_MODE = "zeros"


def with_saved_pad_mode(config):
    """``config`` with the pad mode its weights were trained with ("zeros" where it has none).

    Example:
        >>> with_saved_pad_mode({"patch_size": 2})
        {'pad_mode': 'zeros', 'patch_size': 2}
    """
    return {"pad_mode": _SAVED_PAD_MODE, **config}


@register
class PatchUnfold(ScopedBuildMixin, keras.layers.Layer):
    """Cuts a feature map into non-overlapping patches: ``[B, H, W, C] -> [B, P, N, C]``.

    Args:
        patch_size: int, side of a square patch (2 in MobileViTv2).
        pad: bool, pad a feature map whose sides are not multiples of ``patch_size``
            (bottom and right); when False such a map is refused with an error.
        pad_mode: "edge" (copies of the last row and column: MIRROR_PAD, SYMMETRIC, in the
            int8 graph) or "zeros" (zero pixels: tokens of zero variance, whose layer norm
            computes rsqrt(epsilon) and takes over the int8 range of every real token's; at
            96x96 that cost 5 points post-training, see ``benchmarks/pad_mode_int8.py``).
            The padding is cropped away by the fold. A config saved before this argument
            existed loads as "zeros", the padding its weights were trained with.

    Example:
        >>> PatchUnfold(2)(tf.zeros([1, 8, 6, 16])).shape
        TensorShape([1, 4, 12, 16])
    """

    def __init__(self, patch_size=2, pad=True, pad_mode="edge", **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.pad = bool(pad)
        self.pad_mode = check_pad_mode(pad_mode)
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}.")

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f"{self.name}: PatchUnfold needs a static height and width, got "
                             f"input shape {tuple(input_shape)}.")
        self.height, self.width = int(input_shape[1]), int(input_shape[2])
        self.padded = patch_grid(self.height, self.width, self.patch_size, self.pad)
        if self.pad_mode == "edge" and (self.padded[0] - self.height > self.height
                                        or self.padded[1] - self.width > self.width):
            raise ValueError(
                f"{self.name}: a {self.height}x{self.width} map cannot be edge-padded to "
                f"{self.padded[0]}x{self.padded[1]} (MIRROR_PAD copies at most the map's own "
                "size); use pad_mode='zeros' or a larger input.")
        super().build(input_shape)

    def call(self, x):
        p = self.patch_size
        padded_h, padded_w = self.padded
        if (padded_h, padded_w) != (self.height, self.width):
            mode = "SYMMETRIC" if self.pad_mode == "edge" else "CONSTANT"
            x = tf.pad(x, [[0, 0], [0, padded_h - self.height], [0, padded_w - self.width],
                           [0, 0]], mode=mode)
        channels = x.shape[-1]
        num_patches = (padded_h // p) * (padded_w // p)
        x = tf.nn.space_to_depth(x, p)  # [B, H, W, C] -> [B, H/p, W/p, p*p*C]
        x = tf.reshape(x, [-1, num_patches, p * p, channels])  # -> [B, N, P, C]
        return tf.transpose(x, [0, 2, 1, 3])  # -> [B, P, N, C]

    def compute_output_shape(self, input_shape):
        padded_h, padded_w = patch_grid(int(input_shape[1]), int(input_shape[2]),
                                        self.patch_size, self.pad)
        n = (padded_h // self.patch_size) * (padded_w // self.patch_size)
        return (input_shape[0], self.patch_size ** 2, n, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "pad": self.pad,
                "pad_mode": self.pad_mode}

    @classmethod
    def from_config(cls, config):
        return cls(**with_saved_pad_mode(config))


@register
class PatchFold(ScopedBuildMixin, keras.layers.Layer):
    """Puts patches back into a feature map: ``[B, P, N, C] -> [B, height, width, C]``.

    The inverse of :class:`PatchUnfold`; padding added by the unfold is cropped away.

    Args:
        height: int, height of the feature map before unfolding.
        width: int, width of the feature map before unfolding.
        patch_size: int, side of a square patch.

    Example:
        >>> tokens = PatchUnfold(2)(tf.zeros([1, 5, 6, 8]))
        >>> PatchFold(5, 6, 2)(tokens).shape
        TensorShape([1, 5, 6, 8])
    """

    def __init__(self, height, width, patch_size=2, **kwargs):
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)
        self.patch_size = int(patch_size)
        self.padded = patch_grid(self.height, self.width, self.patch_size, pad=True)

    def build(self, input_shape):
        p = self.patch_size
        expected = (p * p, (self.padded[0] // p) * (self.padded[1] // p))
        if tuple(input_shape[1:3]) != expected:
            raise ValueError(
                f"{self.name}: tokens of shape {tuple(input_shape)} do not fold into a "
                f"{self.height}x{self.width} map with {p}x{p} patches; expected [B, {expected[0]}, "
                f"{expected[1]}, C].")
        super().build(input_shape)

    def call(self, x):
        p = self.patch_size
        padded_h, padded_w = self.padded
        channels = x.shape[-1]
        grid_h, grid_w = padded_h // p, padded_w // p
        # Two 4-D transposes instead of DEPTH_TO_SPACE, whose int8 version (2) the LiteRT
        # reference kernels lack: with these, TFLM output can be checked bit for bit.
        x = tf.reshape(x, [-1, p * p, grid_h, grid_w * channels])  # [B, (dy dx), hy, (wx C)]
        x = tf.transpose(x, [0, 2, 1, 3])  # -> [B, hy, (dy dx), (wx C)]
        x = tf.reshape(x, [-1, p, grid_w, channels])  # -> [B*hy*dy, dx, wx, C]
        x = tf.transpose(x, [0, 2, 1, 3])  # -> [B*hy*dy, wx, dx, C]
        x = tf.reshape(x, [-1, padded_h, padded_w, channels])  # -> [B, H, W, C]
        if (padded_h, padded_w) != (self.height, self.width):
            x = x[:, : self.height, : self.width, :]
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "patch_size": self.patch_size}
