"""The exported library's camera-frame preprocessing (firmware_export/library/src/tinymoe/
preprocess.cpp), compiled for the host, against tinymoe.data.read_image on real cub100
photos: the C++ input tensor must equal Python's within one step on at least 99% of values,
and a model's top-1 must agree on every photo. cub100's photos are all 227x227; the frames
here are each photo cropped to a different size (written as PNG, so read_image reads exactly
those pixels), 24 sizes from 61x47 to 227x227, portrait and landscape."""

import glob
import os
import shutil
import subprocess

import numpy as np
import pytest

from tinymoe.backend import keras, tf
from tinymoe.data import read_image
from tinymoe.export import quantize, tflm_invoke, to_tflite
from tinymoe.export.firmware_app import firmware_dir

CUB100 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cub100")
SIZES = [(227, 227), (200, 150), (160, 120), (227, 101), (99, 210), (128, 128), (61, 47),
         (150, 227), (176, 144), (120, 160), (213, 190), (64, 64), (96, 200), (225, 180),
         (140, 99), (190, 213), (130, 70), (205, 155), (101, 101), (177, 131), (80, 220),
         (222, 111), (144, 176), (99, 140)]
FORMATS = {"rgb888": 0, "rgb565": 1, "rgb565_big_endian": 2, "grayscale": 3, "yuv422": 4}


@pytest.fixture(scope="module")
def preprocess_binary(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build the preprocessing for the host")
    folder = tmp_path_factory.mktemp("preprocess")
    binary = folder / "preprocess_frame"
    src = os.path.join(firmware_dir(), "library", "src")
    subprocess.run(["g++", "-O2", "-std=c++17", "-Wall", "-Werror", f"-I{src}",
                    os.path.join(os.path.dirname(__file__), "native", "preprocess_frame.cpp"),
                    os.path.join(src, "tinymoe", "preprocess.cpp"), "-o", str(binary)],
                   check=True)
    return binary, folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 real photos of different species, each cropped to its own size, as PNG files."""
    paths = sorted(glob.glob(os.path.join(CUB100, "images", "*", "*.jpg")))
    if not paths:
        pytest.skip(f"no cub100 photos in {os.path.abspath(CUB100)}")
    folder = tmp_path_factory.mktemp("photos")
    frames = []
    for k, (height, width) in enumerate(SIZES):
        path = paths[k * (len(paths) // len(SIZES))]
        image = tf.io.decode_image(open(path, "rb").read(), channels=3).numpy()
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 3
        frame = np.ascontiguousarray(image[top:top + height, left:left + width])
        png = folder / f"photo_{k}.png"
        png.write_bytes(tf.io.encode_png(frame).numpy())
        frames.append((str(png), frame))
    return frames


def _device(binary_and_folder, frames, size, scale, zero_point, fmt="rgb888"):
    """The C++ pixels and int8 input for each raw frame (bytes in `fmt`, width, height)."""
    binary, folder = binary_and_folder
    lines = []
    for k, (raw, width, height) in enumerate(frames):
        (folder / f"frame_{k}.raw").write_bytes(raw)
        lines.append(f"{FORMATS[fmt]} {width} {height} {folder}/frame_{k}.raw {size} {size} "
                     f"{scale!r} {zero_point} {folder}/pixels_{k}.raw {folder}/input_{k}.raw")
    subprocess.run([str(binary)], input="\n".join(lines) + "\n", text=True, check=True)
    pixels = [np.fromfile(folder / f"pixels_{k}.raw", np.uint8).reshape(size, size, 3)
              for k in range(len(frames))]
    inputs = [np.fromfile(folder / f"input_{k}.raw", np.int8).reshape(size, size, 3)
              for k in range(len(frames))]
    return np.stack(pixels), np.stack(inputs)


def _small_model(size):
    keras.utils.set_random_seed(0)
    from tinymoe.models import create_model, settle_batch_norms

    images = np.round(np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)))
    model = create_model("mobilevit_v2_mcu", num_classes=10, input_shape=(size, size, 3))
    return to_tflite(settle_batch_norms(model, images), images.astype(np.float32))


def test_device_input_equals_read_image_on_real_photos(preprocess_binary, photos):
    size = 64
    tflite_bytes = _small_model(size)
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=tflite_bytes).get_input_details()[0]
    scale = float(details["quantization_parameters"]["scales"][0])
    zero_point = int(details["quantization_parameters"]["zero_points"][0])
    frames = [(frame.tobytes(), frame.shape[1], frame.shape[0]) for _, frame in photos]
    assert len({(w, h) for _, w, h in frames}) == len(frames) >= 20
    for out in (size, 128):
        pixels, inputs = _device(preprocess_binary, frames, out, scale, zero_point)
        expected = np.stack([read_image(path, out) for path, _ in photos])
        steps = np.abs(inputs.astype(int) - quantize(expected, scale, zero_point).astype(int))
        assert np.all(steps <= 1) and np.mean(steps == 0) >= 0.99, np.mean(steps == 0)
        print(f"{len(photos)} photos to {out}x{out}: {np.mean(pixels == expected):.5f} of "
              f"pixel values equal, {np.mean(steps == 0):.5f} of int8 values")
        if out == size:
            device_top = np.argmax(tflm_invoke(tflite_bytes, inputs, quantized_input=True), -1)
            python_top = np.argmax(tflm_invoke(tflite_bytes, expected.astype(np.float32)), -1)
            np.testing.assert_array_equal(device_top, python_top)


def _encode(frame, fmt):
    """The frame's bytes in `fmt`, and the RGB888 image a device decodes from them (the
    same integer arithmetic as preprocess.cpp)."""
    r, g, b = (frame[..., c].astype(np.int32) for c in range(3))
    if fmt == "grayscale":
        grey = np.round(0.299 * r + 0.587 * g + 0.114 * b).astype(np.uint8)
        return grey.tobytes(), np.repeat(grey[..., None], 3, -1)
    if fmt.startswith("rgb565"):
        word = ((r >> 3) << 11) | ((g >> 2) << 5) | (b >> 3)
        raw = word.astype("<u2" if fmt == "rgb565" else ">u2").tobytes()
        r5, g6, b5 = word >> 11, (word >> 5) & 63, word & 31
        rgb = np.stack([(r5 << 3) | (r5 >> 2), (g6 << 2) | (g6 >> 4), (b5 << 3) | (b5 >> 2)], -1)
        return raw, rgb.astype(np.uint8)
    y = np.clip(np.round(0.299 * r + 0.587 * g + 0.114 * b), 0, 255).astype(np.int32)
    cb = np.clip(np.round(-0.168736 * r - 0.331264 * g + 0.5 * b + 128), 0, 255).astype(np.int32)
    cr = np.clip(np.round(0.5 * r - 0.418688 * g - 0.081312 * b + 128), 0, 255).astype(np.int32)
    u = cb.reshape(cb.shape[0], -1, 2)[..., 0]  # YUYV keeps the even pixel's chroma
    v = cr.reshape(cr.shape[0], -1, 2)[..., 0]
    raw = np.stack([y[:, 0::2], u, y[:, 1::2], v], -1).astype(np.uint8).tobytes()
    cb_full, cr_full = np.repeat(u, 2, 1) - 128, np.repeat(v, 2, 1) - 128
    half = 1 << 15
    rgb = np.stack([y + ((91881 * cr_full + half) >> 16),
                    y + ((-22554 * cb_full - 46802 * cr_full + half) >> 16),
                    y + ((116130 * cb_full + half) >> 16)], -1)
    return raw, np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["rgb565", "rgb565_big_endian", "grayscale", "yuv422"])
def test_camera_pixel_formats_resize_as_their_rgb_image(preprocess_binary, photos, fmt):
    """A frame in a camera's format gives what read_image gives for the RGB image the same
    frame decodes to (RGB565 bits widened, grey repeated, YUYV by JPEG's BT.601)."""
    chosen = [frame[:, :frame.shape[1] // 2 * 2] for _, frame in photos[:8]]
    encoded = [_encode(frame, fmt) for frame in chosen]
    frames = [(raw, frame.shape[1], frame.shape[0]) for (raw, _), frame in zip(encoded, chosen)]
    pixels, _ = _device(preprocess_binary, frames, 96, 1.0, -128, fmt)
    expected = np.stack([np.clip(np.round(tf.image.resize(rgb, (96, 96), antialias=True)
                                          .numpy()), 0, 255) for _, rgb in encoded])
    assert np.mean(np.abs(pixels.astype(int) - expected) <= 1) >= 0.99
    assert np.mean(pixels == expected) >= 0.99
