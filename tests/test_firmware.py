"""Measurement (tinymoe report) and firmware files (tinymoe export)."""

import os
import re
import subprocess

import numpy as np
import pytest

from tinymoe.backend import keras, tf
from tinymoe.cli import main
from tinymoe.export import (ArenaError, TflmUnsupportedError, check_tflm, op_table, report,
                            strip_for_device, tflm_invoke, to_tflite, write_firmware)
from tinymoe.export.firmware_files import FILES, resolver_method
from tinymoe.layers import ConvBNAct, MoEFeedForward
from tinymoe.profile import count_macs

SIZE = 16


def _small_model():
    """Conv, an MoE feed-forward on 2x2 patches, pooling and a classifier: a few ops types."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = ConvBNAct(8, strides=2, name="stem")(inputs)
    tokens = keras.layers.Reshape((4, 16, 8))(x)
    tokens = MoEFeedForward(num_experts=2, hidden_dim=8, name="moe")(tokens)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Reshape((8, 8, 8))(tokens))
    return keras.Model(inputs, keras.layers.Dense(3, name="classifier")(x))


@pytest.fixture(scope="module")
def model_and_tflite():
    keras.utils.set_random_seed(0)
    model = _small_model()
    images = np.random.default_rng(0).uniform(0, 255, (16, SIZE, SIZE, 3)).astype(np.float32)
    return model, to_tflite(model, images)


@pytest.fixture(scope="module")
def measured(model_and_tflite):
    return report(model_and_tflite[1])


def test_report_measures_flash_arena_and_macs(model_and_tflite, measured):
    model, tflite_bytes = model_and_tflite
    assert measured["flash_bytes"] == len(tflite_bytes)
    assert 0 < measured["weight_bytes"] < measured["flash_bytes"]
    arena = measured["arena_bytes"]
    assert check_tflm(tflite_bytes, arena_size=arena).ok
    assert not check_tflm(tflite_bytes, arena_size=arena - 256).ok  # bisection is tight
    # The converter folds batch norm but keeps every multiply-accumulate: same count as Keras.
    assert measured["macs"] == count_macs(model)
    assert sum(row["macs"] for row in measured["ops"]) == measured["macs"]
    assert sum(measured["op_counts"].values()) == len(measured["ops"])


def test_report_refuses_an_arena_over_the_limit(model_and_tflite, measured):
    with pytest.raises(ArenaError, match=f"{measured['arena_bytes']:,} bytes"):
        report(model_and_tflite[1], arena_limit=measured["arena_bytes"] - 1024)


def test_to_tflite_refuses_an_op_tflm_lacks():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Activation(tf.nn.gelu)(keras.layers.Conv2D(4, 1)(inputs))
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    with pytest.raises(TflmUnsupportedError, match="GELU") as error:
        to_tflite(keras.Model(inputs, outputs), images)
    assert error.value.missing_ops == ("GELU",)


def test_firmware_files_are_complete_and_deterministic(model_and_tflite, measured, tmp_path):
    tflite_bytes = model_and_tflite[1]
    first = write_firmware(tflite_bytes, tmp_path / "a", name="birds",
                           labels=["robin", "wren", 'say "hi"'],
                           arena_bytes=measured["arena_bytes"])
    second = write_firmware(tflite_bytes, tmp_path / "b", name="birds",
                            labels=["robin", "wren", 'say "hi"'],
                            arena_bytes=measured["arena_bytes"])
    assert sorted(os.path.basename(p) for p in first) == sorted(FILES)
    for a, b in zip(first, second):
        assert open(a, "rb").read() == open(b, "rb").read()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    resolver = (tmp_path / "a" / "op_resolver.h").read_text()
    ops = sorted({row["op"] for row in op_table(tflite_bytes)})
    assert re.findall(r"resolver\.(Add\w+)\(\) != kTfLiteOk", resolver) == [
        resolver_method(op) for op in ops]
    assert "MicroMutableOpResolver<kNumOpTypes>" in resolver
    assert f"constexpr int kNumOpTypes = {len(ops)};" in resolver
    assert resolver_method("DEPTHWISE_CONV_2D") == "AddDepthwiseConv2D"
    assert resolver_method("BATCH_MATMUL") == "AddBatchMatMul"
    noted = write_firmware(tflite_bytes, tmp_path / "c", arena_bytes=measured["arena_bytes"],
                           notes=["stage4_mvit/transformer_3: capacity factor 2", "a\nb"])
    settings = open([p for p in noted if p.endswith("model_settings.h")][0]).read()
    assert ("// stage4_mvit/transformer_3: capacity factor 2\n// a\n// b\n\n#endif"
            in settings)


def _compile_and_run(folder, main_source, sources):
    (folder / "main.cc").write_text(main_source)
    binary = folder / "check"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-I", str(folder), "-o",
                    str(binary), str(folder / "main.cc"), *[str(folder / s) for s in sources]],
                   check=True, capture_output=True, text=True)
    return subprocess.run([str(binary)], check=True, capture_output=True, text=True,
                          cwd=folder).stdout


def test_exported_array_compiles_and_reproduces_the_tflite_byte_for_byte(
        model_and_tflite, measured, tmp_path):
    tflite_bytes = model_and_tflite[1]
    write_firmware(tflite_bytes, tmp_path, name="birds", labels=["robin", "wren", 'say "hi"'],
                   arena_bytes=measured["arena_bytes"])
    source = r'''
#include <cstdint>
#include <cstdio>
#include "labels.h"
#include "model_data.h"
#include "model_settings.h"
int main() {
  FILE* f = std::fopen("roundtrip.tflite", "wb");
  std::fwrite(g_birds_model_data, 1, g_birds_model_data_size, f);
  std::fclose(f);
  std::printf("%d %d %d %d %d\n", kInputHeight, kInputWidth, kInputChannels, kNumClasses,
              static_cast<int>(reinterpret_cast<std::uintptr_t>(TINYMOE_MODEL_DATA) % 16));
  for (int i = 0; i < kNumClasses; ++i) std::printf("%s|", kLabels[i]);
  std::printf("\n%d\n", kTensorArenaSize);
}
'''
    out = _compile_and_run(tmp_path, source, ["model_data.cc", "labels.cc"]).splitlines()
    assert (tmp_path / "roundtrip.tflite").read_bytes() == strip_for_device(tflite_bytes)[0]
    assert out[0] == f"{SIZE} {SIZE} 3 3 0"
    assert out[1] == 'robin|wren|say "hi"|'
    assert measured["arena_bytes"] < int(out[2]) <= measured["arena_bytes"] * 1.1 + 1024


def test_export_writes_nothing_on_bad_input(model_and_tflite, measured, tmp_path, capsys):
    tflite_bytes = model_and_tflite[1]
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["export", str(path), "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "x"
    limit = str(measured["arena_bytes"] - 1024)
    assert main(["export", str(path), "--out", str(tmp_path / "fw"), "--arena-limit", limit]) == 2
    assert "tensor arena" in capsys.readouterr().err
    assert not (tmp_path / "fw").exists()
    assert main(["export", str(tmp_path / "missing.tflite"), "--out", str(tmp_path / "fw")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="3 outputs"):
        write_firmware(tflite_bytes, tmp_path / "fw", labels=["a", "b"], arena_bytes=1000)
    assert not (tmp_path / "fw").exists()


def test_cli_export_and_report(model_and_tflite, tmp_path, capsys):
    path = tmp_path / "model.tflite"
    path.write_bytes(model_and_tflite[1])
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert main(["report", str(path), "--json"]) == 0
    result = __import__("json").loads(capsys.readouterr().out)
    assert result["flash_bytes"] == len(model_and_tflite[1])
    assert main(["export", str(path), "--out", str(tmp_path / "fw")]) == 0
    assert '"a",\n    "b",\n    "c",' in (tmp_path / "fw" / "labels.cc").read_text()


def test_the_device_model_is_stripped_and_runs_the_same_in_tflm(model_and_tflite, measured,
                                                                 tmp_path):
    from tensorflow.lite.tools import flatbuffer_utils

    tflite_bytes = model_and_tflite[1]
    stripped, names = strip_for_device(tflite_bytes)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(stripped))
    tensors = model.subgraphs[0].tensors
    assert all(t.name in (None, b"", "") for t in tensors) and not model.metadata
    per_channel = [t for t in tensors if t.quantization is not None
                   and t.quantization.scale is not None and len(t.quantization.scale) > 1]
    assert per_channel and all(len(t.quantization.zeroPoint) == 1 for t in per_channel)
    # What goes: a name per tensor, metadata, and an int64 zero point per channel but one.
    saved = sum(8 * (len(t.quantization.scale) - 1) for t in per_channel)
    assert len(tflite_bytes) - len(stripped) >= saved
    images = np.random.default_rng(1).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_array_equal(tflm_invoke(stripped, images, dequantize_output=False),
                                  tflm_invoke(tflite_bytes, images, dequantize_output=False))
    assert check_tflm(stripped, arena_size=measured["arena_bytes"]).ok
    write_firmware(tflite_bytes, tmp_path / "kept", arena_bytes=1000, strip=False)
    assert f"_size = {len(tflite_bytes)};" in (tmp_path / "kept" / "model_data.cc").read_text()
    listed = (tmp_path / "kept" / "tensor_names.txt").read_text().splitlines()
    assert len(listed) == len(tensors) and listed[0].split(" ", 2)[2] == names["tensors"][0][0]
