"""The exported libraries, built as a board project builds them and run under QEMU.

`tinymoe export --format arduino --zip` on a model of the README walkthrough's architecture
(the recommended MobileNetV2-0.35, at 32x32 on four cub100 species, trained here from random
weights for a minute: the ImageNet file is not needed for the ops the library must carry), its classify_photo example built by Debian's arduino-builder against the project's
minimal QEMU platform (firmware_export/arduino_qemu) for mps2-an386 (Cortex-M4F) and
mps2-an500 (Cortex-M7), both with CMSIS-NN; then `--format cmake` built with CMake and
arm-none-eabi-gcc for the Cortex-M7. Each run must print the photo's species and the int8
output of the Python TFLite Micro interpreter on read_image(photo), byte for byte. The
manifests are linted offline by PlatformIO and ESP-IDF's component manager.

Each build compiles TFLite Micro's sources for the model's ops (about 80 C++ files and
CMSIS-NN): a few minutes each on 2 cores. Without the tools the tests skip and say why;
`make test` installs them (`board-tools`).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tinymoe.backend import keras
from tinymoe.cli import main
from tinymoe.data import read_image
from tinymoe.export import tflm_invoke, to_tflite
from tinymoe.export.firmware_app import _parse, firmware_dir
from tinymoe.models import create_model

CUB100 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cub100")
SIZE = 32
SPECIES = 4
LINT = os.path.join(os.path.dirname(__file__), "..", ".venv-lint", "bin")


def _need(*tools):
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make board-tools / "
                    "make -C firmware_export cortex-m-tools, as root)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained 32x32 MobileNetV2-0.35 on four species, one of its training photos that Python
    TFLM classifies as its species, and the model exported as an Arduino and a CMake
    library."""
    folders = sorted(glob.glob(os.path.join(CUB100, "images", "*")))[:SPECIES]
    if not folders:
        pytest.skip(f"no cub100 photos in {os.path.abspath(CUB100)}")
    species = [os.path.basename(folder) for folder in folders]
    paths, labels = [], []
    for label, folder in enumerate(folders):
        for path in sorted(glob.glob(os.path.join(folder, "*.jpg")))[:24]:
            paths.append(path)
            labels.append(label)
    images = np.stack([read_image(path, SIZE) for path in paths]).astype(np.float32)
    labels = np.array(labels)
    keras.utils.set_random_seed(0)
    # Batch-norm momentum 0.5: the running statistics settle in these few dozen steps (as in
    # test_export's fixture).
    model = create_model("mobilenet_v2_035", num_classes=SPECIES, bn_momentum=0.5,
                         input_shape=(SIZE, SIZE, 3))
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, epochs=12, batch_size=16, verbose=0, shuffle=True)
    tflite_bytes = to_tflite(model, images[::4])
    predicted = np.argmax(tflm_invoke(tflite_bytes, images), -1)
    right = np.flatnonzero(predicted == labels)
    assert len(right), "the model learnt none of its training photos"
    photo = paths[right[0]]
    folder = tmp_path_factory.mktemp("export")
    (folder / "model.tflite").write_bytes(tflite_bytes)
    (folder / "labels.txt").write_text("".join(f"{name}\n" for name in species))
    for fmt in ("arduino", "cmake"):
        assert main(["export", str(folder / "model.tflite"), "--format", fmt, "--zip",
                     "--photo", photo, "--out", str(folder / fmt)]) == 0
    expected = tflm_invoke(tflite_bytes, read_image(photo, SIZE).astype(np.float32),
                           dequantize_output=False)[0]
    return {"folder": folder, "photo": photo, "species": species[labels[right[0]]],
            "expected": expected, "tflite": tflite_bytes}


def _qemu(board, elf):
    result = subprocess.run(["qemu-system-arm", "-M", board, "-nographic", "-monitor", "none",
                             "-semihosting-config", "enable=on,target=native", "-kernel",
                             str(elf)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def _assert_prints_python_tflm(log, exported):
    outputs, top = _parse(log, SPECIES)
    np.testing.assert_array_equal(outputs, exported["expected"])
    assert re.search(rf"^Species: {re.escape(exported['species'])}\r?$", log, flags=re.M), log
    assert top[0][0] == exported["species"]
    assert re.search(r"^Photo: .*, \d+x\d+ RGB888\r?$", log, flags=re.M), log


@pytest.fixture(scope="module")
def arduino_builds(exported, tmp_path_factory):
    """The classify_photo example built by arduino-builder for both QEMU boards."""
    _need("arduino-builder", "arm-none-eabi-g++", "qemu-system-arm")
    library = exported["folder"] / "arduino"
    tools = tmp_path_factory.mktemp("tools")
    elves = {}
    for board in ("mps2_an386", "mps2_an500"):
        build = tmp_path_factory.mktemp(f"build_{board}")
        command = ["arduino-builder", "-compile", "-hardware", "/usr/share/arduino-builder",
                   "-hardware", os.path.join(firmware_dir(), "arduino_qemu"), "-tools",
                   str(tools), "-libraries", str(library), "-fqbn", f"tinymoe:qemu:{board}",
                   "-build-path", str(build),
                   str(library / "tinymoe_model" / "examples" / "classify_photo" /
                       "classify_photo.ino")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=3000)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        elves[board] = build / "classify_photo.ino.elf"
    return elves


@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500"])
def test_arduino_example_prints_the_species_as_python_tflm(exported, arduino_builds, board):
    elf = arduino_builds[board.replace("-", "_")]
    log = _qemu(board, elf)
    _assert_prints_python_tflm(log, exported)
    # CMSIS-NN's kernels are the ones compiled in (arduino-builder links every object).
    symbols = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                             check=True).stdout
    assert "arm_convolve_s8" in symbols
    used, reserved = map(int, re.search(r"Arena used: (\d+) of (\d+) bytes", log).groups())
    assert 0 < used <= reserved


def test_arduino_zip_is_a_library_the_ide_installs(exported):
    with zipfile.ZipFile(exported["folder"] / "arduino" / "tinymoe_model.zip") as bundle:
        names = bundle.namelist()
        properties = bundle.read("tinymoe_model/library.properties").decode()
    assert {name.split("/")[0] for name in names} == {"tinymoe_model"}
    for name in ("src/tinymoe_model.h", "src/tinymoe/classifier.cpp",
                 "src/tinymoe/model_data.cpp", "examples/classify_photo/classify_photo.ino",
                 "examples/classify_photo/photo.cpp", "examples/camera/camera.ino",
                 "src/tensorflow/lite/micro/micro_interpreter.cpp",
                 "src/third_party/cmsis_nn/Include/arm_nnfunctions.h"):
        assert f"tinymoe_model/{name}" in names
    # Only the model's kernels: no audio signal library, no kernel of an op it lacks (every
    # header stays: the op resolver's header includes them all).
    assert not any(name.endswith(".cpp") and "/signal/" in name or
                   name.endswith("kernels/svdf.cpp") for name in names)
    fields = dict(line.split("=", 1) for line in properties.splitlines())
    assert {"name", "version", "author", "maintainer", "sentence", "paragraph", "category",
            "url", "architectures"} <= set(fields) and fields["name"] == "tinymoe_model"
    assert not any(name.endswith(".cc") for name in names)  # Arduino compiles .cpp only


@pytest.fixture(scope="module")
def cmake_build(exported, tmp_path_factory):
    """The CMake library and its example, built with arm-none-eabi-gcc for the Cortex-M7,
    with the QEMU core's start-up and UART (firmware_export/arduino_qemu) around it."""
    _need("cmake", "ninja", "arm-none-eabi-g++", "qemu-system-arm")
    library = exported["folder"] / "cmake" / "tinymoe_model"
    core = os.path.join(firmware_dir(), "arduino_qemu", "tinymoe", "qemu")
    project = tmp_path_factory.mktemp("cmake_app")
    flags = "-mcpu=cortex-m7 -mfpu=fpv5-sp-d16 -mfloat-abi=hard -mthumb -ffunction-sections " \
            "-fdata-sections"
    (project / "toolchain.cmake").write_text(
        "set(CMAKE_SYSTEM_NAME Generic)\nset(CMAKE_SYSTEM_PROCESSOR arm)\n"
        "set(CMAKE_C_COMPILER arm-none-eabi-gcc)\nset(CMAKE_CXX_COMPILER arm-none-eabi-g++)\n"
        "set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)\n"
        f'set(CMAKE_C_FLAGS_INIT "{flags}")\n'
        f'set(CMAKE_CXX_FLAGS_INIT "{flags} -fno-rtti -fno-exceptions -fno-threadsafe-statics")\n')
    (project / "glue.cpp").write_text("int classify_photo();\nvoid setup() { classify_photo(); }"
                                      "\nvoid loop() {}\n")
    example = library / "examples" / "classify_photo"
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(qemu_app C CXX)\n"
        f"add_subdirectory({library} tinymoe)\n"
        f"add_executable(app.elf {example}/classify_photo.cpp {example}/photo.cpp "
        f"{core}/cores/qemu/qemu_board.cpp glue.cpp)\n"
        f"target_include_directories(app.elf PRIVATE {core}/cores/qemu {example})\n"
        "target_link_libraries(app.elf tinymoe_model)\n"
        f"target_link_options(app.elf PRIVATE -T{core}/variants/mps2/mps2.ld --specs=nano.specs "
        "--specs=nosys.specs -nostartfiles -Wl,--gc-sections -Wl,-u,Reset_Handler)\n")
    build = project / "build"
    for command in (["cmake", "-G", "Ninja", "-S", str(project), "-B", str(build),
                     "-DCMAKE_BUILD_TYPE=MinSizeRel",
                     f"-DCMAKE_TOOLCHAIN_FILE={project / 'toolchain.cmake'}"],
                    ["ninja", "-C", str(build), "-j2"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=3000)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build / "app.elf"


# The CMake build compiles TFLM's sources a third time, for the Cortex-M7 the Arduino build
# already covers: it runs with `make test-slow`.
@pytest.mark.slow
def test_cmake_library_built_with_arm_gcc_prints_the_species_as_python_tflm(exported,
                                                                           cmake_build):
    _assert_prints_python_tflm(_qemu("mps2-an500", cmake_build), exported)


def test_idf_component_manifest_lints_offline(exported):
    compote = os.path.join(LINT, "compote")
    if not os.path.exists(compote):
        pytest.skip("idf-component-manager not installed in .venv-lint (make board-tools)")
    library = exported["folder"] / "cmake" / "tinymoe_model"
    result = subprocess.run([compote, "manifest", "lint"], cwd=library, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (library.parent / "broken").mkdir(exist_ok=True)
    (library.parent / "broken" / "idf_component.yml").write_text('version: "not a version"\n')
    broken = subprocess.run([compote, "manifest", "lint"], cwd=library.parent / "broken",
                            capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0  # the linter does read what it is given


# PlatformIO checks `license` against SPDX's list, which it downloads; offline, the list is
# the one identifier the manifest uses. Everything else is PlatformIO's own validation.
_PIO_OFFLINE = """
import sys
from platformio.package.manifest.schema import ManifestSchema
ManifestSchema.load_spdx_licenses = staticmethod(
    lambda: {"licenses": [{"licenseId": "Apache-2.0"}]})
from platformio.__main__ import main
sys.argv = ["pio", "pkg", "pack", sys.argv[1], "-o", sys.argv[2]]
sys.exit(main())
"""


def test_platformio_manifest_packs_offline(exported, tmp_path):
    python = os.path.join(LINT, "python")
    if not os.path.exists(os.path.join(LINT, "pio")):
        pytest.skip("platformio not installed in .venv-lint (make board-tools)")
    library = exported["folder"] / "cmake" / "tinymoe_model"
    result = subprocess.run([python, "-c", _PIO_OFFLINE, str(library), str(tmp_path)],
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PLATFORMIO_CORE_DIR=str(tmp_path / "core")))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert glob.glob(str(tmp_path / "tinymoe_model-*.tar.gz"))
    manifest = json.loads((library / "library.json").read_text())
    assert manifest["name"] == "tinymoe_model" and manifest["license"] == "Apache-2.0"


def test_zephyr_module_and_cmake_lists_name_the_same_sources(exported):
    library = exported["folder"] / "cmake" / "tinymoe_model"
    module = (library / "zephyr" / "module.yml").read_text()
    assert "cmake: zephyr" in module and "kconfig: zephyr/Kconfig" in module
    sources = re.findall(r"\$\{CMAKE_CURRENT_LIST_DIR\}/(\S+)",
                         (library / "tflm" / "sources.cmake").read_text())
    assert sources and all((library / "tflm" / path).is_file() for path in sources)
    assert "idf_component_register" in (library / "CMakeLists.txt").read_text()
    assert "espressif/esp-tflite-micro" in (library / "idf_component.yml").read_text()
