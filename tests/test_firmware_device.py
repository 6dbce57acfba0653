"""The firmware app of firmware_export/, built against TensorFlow Lite Micro's C++ sources
(the pinned tarball in shared/third_party) and run: natively on the host, as a Cortex-M3
image and as a Cortex-M7 image with CMSIS-NN kernels under QEMU. Its int8 output must equal
the Python TFLM interpreter's byte for byte.

The first run on a machine builds TFLM's library for each target (10-20 minutes each on
2 cores); later runs find it in ~/.cache/tinymoe.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import synthetic_images
from tinymoe.backend import keras
from tinymoe.cli import main
from tinymoe.export import op_names, strip_for_device, tflm_invoke, to_tflite
from tinymoe.export.firmware_app import (_make, firmware_dir, missing_requirements, run_firmware,
                                   tflm_paths)
from tinymoe.export.runtime import _scale_zero_point
from tinymoe.layers import ConvBNAct
from tinymoe.models import create_model, with_dispatch

SIZE, CLASSES = 32, 4


def _require(target):
    """Skips where the toolchain or TFLM sources are missing; in CI that is a failure."""
    missing = missing_requirements(target)
    if missing:
        message = f"{target} firmware build unavailable: {'; '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs the toolchain)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def flagship():
    """The registered MoE flagship (sparse dispatch, as exported) at 32x32, its int8 model,
    and three images: every op type our models use, on a few seconds of emulation. At 32x32
    stage 5 is 1x1 and is edge-padded to one 2x2 patch (MIRROR_PAD), as at 96x96."""
    keras.utils.set_random_seed(0)
    images, _ = synthetic_images(24, SIZE, CLASSES, seed=3)
    images = np.round(images)
    model = with_dispatch(create_model("mobilevit_v2_moe_050", num_classes=CLASSES,
                                       input_shape=(SIZE, SIZE, 3)), "sparse", 1.25)
    tflite_bytes = to_tflite(model, images[:16])
    assert "MIRROR_PAD" in op_names(tflite_bytes)
    test_images = np.concatenate([images[16:18], np.full((1, SIZE, SIZE, 3), 128.0)])
    return tflite_bytes, test_images


@pytest.fixture(scope="module")
def host_run(flagship, tmp_path_factory):
    _require("host")
    tflite_bytes, images = flagship
    workdir = tmp_path_factory.mktemp("host")
    return run_firmware(tflite_bytes, images, target="host", workdir=str(workdir)), workdir


def _assert_same_as_python_tflm(run, tflite_bytes, images):
    # The app quantises each pixel itself (lround(pixel / scale)); tflm_invoke quantises in
    # numpy. Pixels whose pixel / scale is an exact tie (x.5) are in these images, so equal
    # bytes also prove that both round ties the same way.
    from ai_edge_litert.interpreter import Interpreter
    scale, _ = _scale_zero_point(Interpreter(model_content=tflite_bytes).get_input_details()[0])
    ratio = images.astype(np.float32) / np.float32(scale)
    assert np.any(ratio - np.floor(ratio) == 0.5)
    expected = tflm_invoke(tflite_bytes, images, dequantize_output=False)
    assert run.outputs.shape == expected.shape == (len(images), CLASSES)
    np.testing.assert_array_equal(run.outputs, expected)
    assert 0 < run.arena_used_bytes <= run.arena_size_bytes


def test_host_app_reproduces_python_tflm_byte_for_byte(flagship, host_run):
    run, _ = host_run
    _assert_same_as_python_tflm(run, *flagship)
    assert run.flash_bytes is None  # a host binary has no flash to report


def test_cortex_m3_app_under_qemu_reproduces_python_tflm_byte_for_byte(flagship, host_run,
                                                                       tmp_path):
    _require("cortex-m3")
    tflite_bytes, images = flagship
    run = run_firmware(tflite_bytes, images, target="cortex-m3", workdir=str(tmp_path))
    _assert_same_as_python_tflm(run, tflite_bytes, images)
    # 32-bit pointers and structs: the device arena is never larger than the 64-bit host's.
    assert run.arena_used_bytes <= host_run[0].arena_used_bytes
    assert run.instructions > 0 and set(run.instructions_by_op) == set(op_names(tflite_bytes))
    assert host_run[0].instructions is None  # a host build has no instruction counter
    # The image's flash holds the model array, the TFLM code and the app: more than the array.
    assert run.model_array_bytes == len(strip_for_device(tflite_bytes)[0]) < run.flash_bytes
    elf = tmp_path / "build" / "classify.elf"
    sizes = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True,
                           text=True, check=True).stdout
    section = {m[0]: int(m[1]) for m in re.findall(r"^(\.\w+)\s+(\d+)", sizes, flags=re.M)}
    assert section[".text"] + section[".rodata"] <= run.flash_bytes <= sum(
        section[name] for name in section if name not in (".bss",))


def test_cortex_m7_cmsis_nn_app_reproduces_python_tflm_and_counts_instructions(
        flagship, tmp_path, record_property):
    """The Cortex-M7 image with CMSIS-NN kernels (what an STM32F746 runs), under QEMU
    mps2-an500: byte-equal int8 output, and the instructions of each inference and op type."""
    _require("cortex-m7")
    tflite_bytes, images = flagship
    run = run_firmware(tflite_bytes, images, target="cortex-m7", workdir=str(tmp_path))
    _assert_same_as_python_tflm(run, tflite_bytes, images)
    assert run.model_array_bytes == len(strip_for_device(tflite_bytes)[0]) < run.flash_bytes
    # CMSIS-NN's kernels are the ones linked, not TFLM's reference kernels.
    linked = (tmp_path / "build" / "classify.map").read_text()
    assert "arm_convolve_s8" in linked and "arm_depthwise_conv" in linked
    ops = op_names(tflite_bytes)
    by_op = run.instructions_by_op
    assert set(by_op) == set(ops)
    assert all(by_op[op]["calls"] == ops.count(op) for op in by_op)  # one event per op
    # Each reading of the timer is exact to one tick (40 instructions); the interpreter's own
    # work between ops is counted in the total only.
    counted = sum(op["instructions"] for op in by_op.values())
    assert 0.9 * run.instructions <= counted <= run.instructions + 40 * len(ops)
    record_property("cortex_m7_instructions_per_inference", run.instructions)
    split = ", ".join(f"{op} {v['instructions']:,}" for op, v in by_op.items())
    print(f"Cortex-M7 (CMSIS-NN), 32x32 MoE flagship: {run.instructions:,} instructions per "
          f"inference; {split}")


def test_app_refuses_an_image_of_the_wrong_size(host_run):
    _, workdir = host_run
    app = workdir / "build" / "classify"
    for size, words in ((SIZE * SIZE * 3 - 1, f"has {SIZE * SIZE * 3 - 1} bytes"),
                        (SIZE * SIZE * 3 + 1, f"has more than {SIZE * SIZE * 3} bytes")):
        image = workdir / f"wrong_{size}.rgb"
        image.write_bytes(bytes(size))
        result = subprocess.run([str(app), str(image)], capture_output=True, text=True)
        assert result.returncode == 1
        assert words in result.stderr and f"takes exactly {SIZE * SIZE * 3}" in result.stderr


def _negative_head_model():
    """A 32x32 model whose logits are its classifier's biases: all negative, two in (-1, 0)."""
    inputs = keras.Input((32, 32, 3))
    x = ConvBNAct(8, strides=4, name="stem")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(3, name="classifier")
    outputs = head(x)
    head.set_weights([np.zeros((8, 3), np.float32), np.array([-0.235, -0.61, -1.5], np.float32)])
    return keras.Model(inputs, outputs)


def test_printed_scores_keep_their_sign(tmp_path):
    _require("host")
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    tflite_bytes = to_tflite(_negative_head_model(), images)
    run = run_firmware(tflite_bytes, images[:1], target="host", labels=["a", "b", "c"])
    from ai_edge_litert.interpreter import Interpreter
    scale, zero = _scale_zero_point(Interpreter(model_content=tflite_bytes).get_output_details()[0])
    expected = [(label, int(np.round(100 * scale * (int(q) - zero))))
                for label, q in zip("abc", run.outputs[0])]
    assert run.top[0] == expected
    assert -100 < expected[0][1] < 0  # the case that printed without its minus sign
    assert "1. a (-0." in run.log


def _readme_commands():
    """The shell lines of firmware_export/README.md's "Try it" block."""
    text = open(os.path.join(firmware_dir(), "README.md")).read()
    block = re.search(r"<!-- tested -->\n```sh\n(.*?)```", text, flags=re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_firmware_readme_commands_run_offline(tmp_path):
    """The README's commands, as written, on a copy of firmware_export/ and a small model."""
    _require("host")
    _require("cortex-m3")
    shutil.copytree(firmware_dir(), tmp_path / "firmware_export",
                    ignore=shutil.ignore_patterns("build", "generated"))
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "model.tflite").write_bytes(
        to_tflite(_negative_head_model(), images))
    (tmp_path / "runs" / "demo" / "labels.txt").write_text("a\nb\nc\n")
    env = dict(os.environ, TFLM_TARBALL=tflm_paths("host")["tarball"],
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    outputs = []
    for line in _readme_commands():
        result = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=1800)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        outputs.append(result.stdout + result.stderr)
    runs = [out for out in outputs if "int8 output:" in out]
    assert len(runs) == 2  # host and Cortex-M3
    assert "Flash:" in runs[1] and "1. a (-0." in runs[0] and "1. a (-0." in runs[1]


def test_a_missing_generated_folder_is_named(tmp_path):
    _require("host")
    missing = tmp_path / "none"
    code, log = _make("host", f"GENERATED={missing}", f"BUILD={tmp_path}")
    assert code == 2 and f"No {missing}/model_data.cc: run 'tinymoe export" in log


def test_report_and_export_measure_on_the_cortex_m3_build(tmp_path, capsys):
    _require("cortex-m3")
    images = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    tflite_bytes = to_tflite(_negative_head_model(), images)
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes)
    assert main(["report", str(path), "--target", "cortex-m3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    device = result["device"]
    # 32-bit pointers and structs: never more than the 64-bit Python interpreter's arena.
    assert 0 < device["arena_bytes"] <= result["arena_bytes"]
    assert device["model_bytes"] == len(strip_for_device(tflite_bytes)[0])
    assert device["flash_bytes"] == device["model_bytes"] + device["code_bytes"]
    firmware = tmp_path / "fw"
    limit = str(device["arena_bytes"] - 1)
    assert main(["export", str(path), "--out", str(firmware), "--target", "cortex-m3",
                 "--arena-limit", limit]) == 2
    assert "on the cortex-m3 build" in capsys.readouterr().err and not firmware.exists()
    assert main(["export", str(path), "--out", str(firmware), "--target", "cortex-m3",
                 "--arena-limit", str(device["arena_bytes"])]) == 0
    settings = (firmware / "model_settings.h").read_text()
    assert f"// {device['arena_bytes']} bytes, plus a margin of 10%" in settings
    assert "the cortex-m3 build of TFLite Micro" in settings


def test_report_counts_instructions_on_the_cortex_m7_build(tmp_path, capsys):
    _require("cortex-m7")
    images = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    path = tmp_path / "model.tflite"
    tflite_bytes = to_tflite(_negative_head_model(), images)
    path.write_bytes(tflite_bytes)
    assert main(["report", str(path), "--target", "cortex-m7", "--json"]) == 0
    device = json.loads(capsys.readouterr().out)["device"]
    assert device["target"] == "cortex-m7" and device["instructions"] > 0
    assert set(device["instructions_by_op"]) == set(op_names(tflite_bytes))
    assert main(["report", str(path), "--target", "cortex-m7", "--clock-mhz", "100"]) == 0
    text = capsys.readouterr().out
    milliseconds = device["instructions"] / 100e3
    assert f"instructions per inference: {device['instructions']:,}" in text
    assert f"{milliseconds:,.1f} ms at 100 MHz if one instruction took one cycle" in text
    assert re.search(r"CONV_2D .* MACs +[\d,]+ instructions \( *\d+\.\d%\)", text)


def _budget_export(name, tmp_path):
    model = create_model(name, num_classes=100, input_shape=(128, 128, 3))
    images = np.round(np.random.default_rng(4).uniform(0, 255, (8, 128, 128, 3)))
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(to_tflite(with_dispatch(model, "sparse", 1.25), images.astype(np.float32)))
    return main(["export", str(path), "--out", str(tmp_path / name), "--target", "cortex-m3",
                 "--arena-limit", "300000", "--flash-limit", "900000"])


def test_the_mcu_flagship_fits_the_budget_on_cortex_m3(tmp_path, capsys):
    """At 128x128 with 100 classes (arena and flash do not depend on the weights' values)."""
    _require("cortex-m3")
    assert _budget_export("mobilevit_v2_mcu_moe", tmp_path) == 0
    settings = (tmp_path / "mobilevit_v2_mcu_moe" / "model_settings.h").read_text()
    arena = int(re.search(r"// (\d+) bytes, plus a margin", settings).group(1))
    assert "cortex-m3 build" in settings and arena <= 256 * 1024  # the aim; the limit is 300 KB
    size = int(re.search(r"_size = (\d+);", (tmp_path / "mobilevit_v2_mcu_moe" /
                                              "model_data.cc").read_text()).group(1))
    assert size <= 900_000


def test_the_mcu_model_fits_the_budget_and_the_speed_target_on_cortex_m7():
    """mobilevit_v2_mcu at 128x128, 100 classes, on the Cortex-M7 build with CMSIS-NN: arena
    within 300 KB, the whole image within 1 MB of flash, and at most 1.5x the instructions
    of MobileNetV3-Small 0.7 at 160x160 (74.2 M, benchmarks/results/mcu_speed_128px.md).
    QEMU counts instructions exactly (-icount), so this is a count, not a timing; it depends
    on the shapes, not on the weights (107.0 M, untrained or trained)."""
    _require("cortex-m7")
    from tinymoe.export.firmware_app import measure_on_device
    from tinymoe.models import settle_batch_norms
    keras.utils.set_random_seed(0)
    images = np.round(np.random.default_rng(4).uniform(0, 255, (8, 128, 128, 3)))
    model = create_model("mobilevit_v2_mcu", num_classes=100, input_shape=(128, 128, 3))
    tflite_bytes = to_tflite(settle_batch_norms(model, images), images.astype(np.float32))
    device = measure_on_device(tflite_bytes, "cortex-m7")
    assert device["arena_bytes"] <= 300_000 and device["flash_bytes"] <= 1_000_000
    assert device["instructions"] <= 1.5 * 74_200_000
    assert "LOGISTIC" not in device["instructions_by_op"]


def test_todays_flagship_is_refused_by_the_budget(tmp_path, capsys):
    _require("cortex-m3")
    assert _budget_export("mobilevit_v2_moe_050", tmp_path) == 2
    assert "more than the limit of 900,000 bytes" in capsys.readouterr().err
    assert not (tmp_path / "mobilevit_v2_moe_050").exists()


def test_lut_compressed_experts_run_on_cortex_m3_as_in_python(flagship, tmp_path, capsys):
    """TFLM's DECODE op, on the Cortex-M3 build: the compressed model's output is the Python
    interpreter's, byte for byte; `tinymoe export --lut` registers DECODE."""
    _require("cortex-m3")
    from tinymoe.export.compress import lut_compress
    tflite_bytes, images = flagship
    compressed = lut_compress(tflite_bytes, "experts", bits=4)[0]
    run = run_firmware(compressed, images[:2], target="cortex-m3", workdir=str(tmp_path))
    np.testing.assert_array_equal(run.outputs,
                                  tflm_invoke(compressed, images[:2], dequantize_output=False))
    assert run.model_array_bytes == len(strip_for_device(compressed)[0])
    assert "AddDecode()" in (tmp_path / "generated" / "op_resolver.h").read_text()
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes)
    assert main(["export", str(path), "--out", str(tmp_path / "fw"), "--lut", "experts:4",
                 "--target", "cortex-m3"]) == 0
    assert "AddDecode()" in (tmp_path / "fw" / "op_resolver.h").read_text()
    settings = (tmp_path / "fw" / "model_settings.h").read_text()
    assert f"// {run.arena_used_bytes} bytes, plus a margin" in settings
    assert main(["export", str(path), "--out", str(tmp_path / "bad"), "--lut", "experts"]) == 2
    assert "--lut takes GROUP:BITS" in capsys.readouterr().err


def test_per_image_moe_on_the_cortex_m7_cmsis_nn_build_reproduces_python_tflm(tmp_path):
    """Per-image routing gathers the chosen expert's int8 weights and feeds them to
    FULLY_CONNECTED as a runtime filter. CMSIS-NN then computes the filter's sums at run time,
    and it has a 1x1-convolution path (rank > 2) that ignores a filter's zero point: equal
    bytes on images routed to different experts show that the path taken is right."""
    _require("cortex-m7")
    from tinymoe.models import MoEConfig, read_routing

    keras.utils.set_random_seed(0)
    images, _ = synthetic_images(24, SIZE, CLASSES, seed=3)
    images = np.round(images)
    model = create_model("mobilevit_v2_mcu_moe", num_classes=CLASSES,
                         input_shape=(SIZE, SIZE, 3),
                         moe=MoEConfig(layers=((4, -1),), routing="image"))
    tflite_bytes = to_tflite(with_dispatch(model, "sparse"), images[:16])
    assert {"GATHER", "ARG_MAX", "FULLY_CONNECTED"} <= set(op_names(tflite_bytes))
    test_images = np.concatenate([images[16:], np.full((1, SIZE, SIZE, 3), 128.0)])
    experts = next(iter(read_routing(model, test_images).values()))["experts"].ravel()
    assert len(set(experts)) >= 2, experts
    run = run_firmware(tflite_bytes, test_images, target="cortex-m7", workdir=str(tmp_path))
    _assert_same_as_python_tflm(run, tflite_bytes, test_images)


def test_an_image_filling_both_memories_runs_and_one_past_the_ram_fails_to_link(tmp_path):
    """mps2_an385.ld on QEMU's boards (4 MB of flash, 4 MB of RAM): a 1 MB model array in
    flash and a 3.5 MB tensor arena in RAM fit, each in its memory, and run (they locked up
    at reset once the two passed 4 MB together: QEMU's loader zero-filled .bss at its flash
    load address, over the vector table); an arena past the RAM fails to link, saying so."""
    _require("cortex-m3")
    from tinymoe.export.firmware_app import FirmwareError

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(5200)(keras.layers.Flatten()(inputs)))
    images = np.random.default_rng(5).integers(0, 256, (8, 8, 8, 3)).astype(np.float32)
    tflite_bytes = to_tflite(model, images)
    assert len(tflite_bytes) > 1_000_000
    # kTensorArenaSize is the arena given plus 10%: 3,520,000 bytes.
    run = run_firmware(tflite_bytes, images[:1], target="cortex-m3", arena_bytes=3_200_000,
                       workdir=str(tmp_path / "fits"))
    np.testing.assert_array_equal(run.outputs,
                                  tflm_invoke(tflite_bytes, images[:1], dequantize_output=False))
    assert run.flash_bytes + run.arena_size_bytes > 4 * 1024 * 1024
    with pytest.raises(FirmwareError, match=r"RAM overflow: \.data, \.bss \(tensor arena\), 64 "
                                            r"KB stack pass the board's 4 MB of RAM"):
        run_firmware(tflite_bytes, images[:1], target="cortex-m3", arena_bytes=3_900_000,
                     workdir=str(tmp_path / "too_large"))


def test_a_compiler_without_its_cpp_library_is_named_and_the_cortex_m_tests_skip(
        tmp_path, monkeypatch):
    """arm-none-eabi-g++ without libstdc++-arm-none-eabi-newlib (simulated: a compiler on
    PATH that cannot find <cstddef>, as that one does): the TFLM build used to fail and stop
    `make test`. The one check that make test and the tests use builds a C++ program with
    the target's flags, so both name what is missing; make test goes on (a root shell with
    apt-get installs the packages instead: id -u is faked here, nothing is installed)."""
    from tinymoe.export.firmware_app import FirmwareError

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "arm-none-eabi-g++").write_text(
        "#!/bin/sh\necho '<stdin>:1:10: fatal error: cstddef: No such file or directory' >&2\n"
        "echo 'compilation terminated.' >&2\nexit 1\n")
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")  # not root: no apt-get
    for tool in fake.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    reason = ("arm-none-eabi-g++ cannot build C++ with the cortex-m3-qemu flags (cstddef: No "
              "such file or directory)")
    assert reason in missing_requirements("cortex-m3")
    assert "cortex-m7-qemu flags (cstddef" in missing_requirements("cortex-m7")[0]
    with pytest.raises(FirmwareError, match=r"The cortex-m3 build lacks: arm-none-eabi-g\+\+ "
                                            r"cannot build C\+\+"):
        run_firmware(b"", np.zeros((1, 8, 8, 3)), target="cortex-m3")
    root = os.path.dirname(firmware_dir())
    result = subprocess.run(["make", "--no-print-directory", "-C", root, "firmware-tools"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"The Cortex-M firmware tests will skip: {reason}" in result.stderr
