"""The manifests of an exported library, for each build system that reads one.

Arduino: ``library.properties`` (arduino-cli's docs/library-specification.md). The plain C++
library: ``CMakeLists.txt`` (a CMake library, and an ESP-IDF component when ESP-IDF reads
it), ``tflm/sources.cmake`` (TFLM's files), ``library.json`` (PlatformIO),
``idf_component.yml`` (ESP-IDF's component manager: TFLite Micro comes from Espressif's
``esp-tflite-micro`` there, with its ESP-NN kernels) and ``zephyr/`` (a Zephyr module:
``module.yml``, ``CMakeLists.txt``, ``Kconfig``).
"""

import json
import re

from tinymoe._version import __version__

# The Arduino cores of Arm boards the library's sources are meant for (CMSIS-NN kernels):
# Arduino's Mbed cores (Nano 33 BLE, Portenta, Nicla, Giga, RP2040), STM32duino, and the
# QEMU boards of tinymoe's tests (firmware_export/arduino_qemu).
ARDUINO_ARCHITECTURES = ("mbed", "mbed_nano", "mbed_portenta", "mbed_nicla", "mbed_giga",
                         "mbed_rp2040", "stm32", "qemu")
OUR_SOURCES = ("src/tinymoe/classifier.cpp", "src/tinymoe/preprocess.cpp",
               "src/tinymoe/model_data.cpp", "src/tinymoe/labels.cpp")


def _facts(generated):
    settings = generated["model_settings.h"]

    def number(key):
        return int(re.search(rf"{key} = (\d+);", settings).group(1))

    return {"height": number("kInputHeight"), "width": number("kInputWidth"),
            "classes": number("kNumClasses"), "arena": number("kTensorArenaSize"),
            "model": int(re.search(r"_size = (\d+);", generated["model_data.cc"]).group(1))}


def _describe(lib, facts):
    return (f"{facts['classes']}-class image classifier ({facts['width']}x{facts['height']} "
            f"int8 input, {facts['model']:,}-byte model, {facts['arena']:,}-byte tensor arena) "
            "on TensorFlow Lite Micro, exported by tinymoe")


def cmake_source_list(copied):
    """``tflm/sources.cmake``: the TFLM and CMSIS-NN files to compile, from ``copied``
    (paths relative to ``tflm/``).

    Example:
        >>> print(cmake_source_list(["a.cpp", "b.h"]).splitlines()[-2])
          ${CMAKE_CURRENT_LIST_DIR}/a.cpp
    """
    sources = [path for path in copied if path.endswith((".c", ".cpp"))]
    return ("# TensorFlow Lite Micro and CMSIS-NN files this model needs, written by tinymoe "
            "export.\nset(TINYMOE_TFLM_SOURCES\n"
            + "".join(f"  ${{CMAKE_CURRENT_LIST_DIR}}/{path}\n" for path in sources) + ")\n")


def _arduino(lib, facts):
    properties = {
        "name": lib, "version": __version__, "author": "tinymoe export",
        "maintainer": "tinymoe export",
        "sentence": _describe(lib, facts) + ".",
        "paragraph": ("tinymoe::Classifier takes a camera frame of any size (RGB888, RGB565, "
                      "grayscale or YUV422), resizes it on the device as the model was "
                      "trained, and gives the top labels. TensorFlow Lite Micro and CMSIS-NN "
                      "are included as sources (Apache-2.0)."),
        "category": "Data Processing", "url": "https://github.com/tensorflow/tflite-micro",
        "architectures": ",".join(ARDUINO_ARCHITECTURES), "includes": f"{lib}.h",
    }
    readme = (f"# {lib}\n\n{_describe(lib, facts)}.\n\n"
              "Install: Arduino IDE > Sketch > Include Library > Add .ZIP Library, and pick "
              f"`{lib}.zip`. Then File > Examples > {lib} > classify_photo, choose your board, "
              "upload, and open the Serial Monitor at 115200 baud: it prints the species of the "
              "photo embedded in `photo.h`. `examples/camera` shows where a camera driver "
              "plugs in (written for the Nano 33 BLE Sense's OV7675; not built by tinymoe's "
              "tests).\n\n"
              "```cpp\n#include <" + lib + ".h>\ntinymoe::Classifier classifier;\n"
              "classifier.begin();\ntinymoe::Result r = classifier.classify(frame, width, "
              "height, tinymoe::PixelFormat::kRGB565);\n// r.top[0].label, r.top[0].score\n```\n\n"
              "Everything under `src/tinymoe/` except `classifier.*` and `preprocess.*` was "
              "generated from the model: export again rather than editing it. "
              "`extras/tensor_names.txt` names the tensors stripped from the embedded model.\n")
    return {"library.properties": "".join(f"{key}={value}\n" for key, value in
                                          properties.items()),
            "README.md": readme}


def _cmake(lib, facts):
    ours = " ".join(OUR_SOURCES)
    cmake = (
        f"# {lib}: {_describe(lib, facts)}.\n"
        "# A CMake project: add_subdirectory(this folder) and link the target "
        f"{lib}.\n# ESP-IDF: put this folder in components/ (TFLite Micro then comes from "
        "espressif/esp-tflite-micro, idf_component.yml).\n"
        "if(ESP_PLATFORM)\n"
        f"  idf_component_register(SRCS {ours}\n"
        "                         INCLUDE_DIRS src\n"
        "                         REQUIRES esp-tflite-micro)\n"
        "  return()\nendif()\n\n"
        "cmake_minimum_required(VERSION 3.13)\n"
        "include(${CMAKE_CURRENT_LIST_DIR}/tflm/sources.cmake)\n"
        f"add_library({lib} STATIC\n"
        + "".join(f"  ${{CMAKE_CURRENT_LIST_DIR}}/{path}\n" for path in OUR_SOURCES)
        + "  ${TINYMOE_TFLM_SOURCES})\n"
        f"target_include_directories({lib} PUBLIC ${{CMAKE_CURRENT_LIST_DIR}}/src\n"
        f"  PRIVATE ${{CMAKE_CURRENT_LIST_DIR}}/tflm)\n"
        f"target_compile_features({lib} PUBLIC cxx_std_17)\n")
    platformio = {
        "name": lib, "version": __version__, "description": _describe(lib, facts),
        "keywords": ["tinyml", "tflite-micro", "image-classification", "camera"],
        "license": "Apache-2.0", "frameworks": "*",
        "platforms": ["nordicnrf52", "ststm32", "raspberrypi", "atmelsam"],
        "build": {"srcDir": ".", "srcFilter": ["+<src/>", "+<tflm/>"], "includeDir": "src",
                  "flags": ["-I tflm"]},
        "examples": ["examples/classify_photo/*.cpp"],
    }
    idf = (f'version: "{__version__}"\n'
           f'description: "{_describe(lib, facts)}"\n'
           "license: Apache-2.0\n"
           "dependencies:\n"
           '  idf: ">=5.0"\n'
           "  espressif/esp-tflite-micro: \"*\"\n")
    config = lib.upper()
    zephyr = {
        "zephyr/module.yml": (f"name: {lib}\nbuild:\n  cmake: zephyr\n  kconfig: zephyr/Kconfig\n"),
        "zephyr/Kconfig": (f"config {config}\n\tbool \"{lib}: tinymoe image classifier\"\n"
                           "\tdepends on CPP\n\thelp\n"
                           f"\t  {_describe(lib, facts)}, with TensorFlow Lite Micro and\n"
                           "\t  CMSIS-NN compiled from this module. Needs C++17\n"
                           "\t  (CONFIG_STD_CPP17) and a C library with math.\n"),
        "zephyr/CMakeLists.txt": (
            f"if(CONFIG_{config})\n"
            "  include(${CMAKE_CURRENT_LIST_DIR}/../tflm/sources.cmake)\n"
            f"  zephyr_library_named({lib})\n"
            "  zephyr_library_sources(\n"
            + "".join(f"    ${{CMAKE_CURRENT_LIST_DIR}}/../{path}\n" for path in OUR_SOURCES)
            + "    ${TINYMOE_TFLM_SOURCES})\n"
            "  zephyr_include_directories(${CMAKE_CURRENT_LIST_DIR}/../src)\n"
            "  zephyr_library_include_directories(${CMAKE_CURRENT_LIST_DIR}/../tflm)\n"
            "endif()\n"),
    }
    readme = (
        f"# {lib}\n\n{_describe(lib, facts)}.\n\n"
        f"`#include \"{lib}.h\"`, then `tinymoe::Classifier` (see `src/tinymoe/classifier.h`). "
        "`examples/classify_photo/classify_photo.cpp` classifies the photo in `photo.h` and "
        "prints the species with printf.\n\n"
        "| build system | what you do |\n|---|---|\n"
        f"| CMake, STM32CubeIDE (CMake project) | `add_subdirectory({lib})`, "
        f"`target_link_libraries(app {lib})`; compile with your board's `-mcpu`/`-mfpu` flags "
        "(CMSIS-NN picks its DSP/MVE code from them) |\n"
        f"| PlatformIO | put the folder in `lib/` (`library.json`) |\n"
        f"| ESP-IDF | put the folder in `components/`; `idf_component.yml` brings "
        "espressif/esp-tflite-micro, whose TFLite Micro replaces `tflm/` |\n"
        f"| Zephyr | list the folder in `ZEPHYR_EXTRA_MODULES`, set `CONFIG_CPP=y`, "
        f"`CONFIG_STD_CPP17=y`, `CONFIG_{config}=y` |\n\n"
        "`tflm/` holds TensorFlow Lite Micro and CMSIS-NN (Apache-2.0) as the model needs "
        "them, copied from tinymoe's pinned tree with their includes made relative to "
        "`tflm/`. Everything under `src/tinymoe/` except `classifier.*` and `preprocess.*` was "
        "generated from the model: export again rather than editing it.\n")
    return {"CMakeLists.txt": cmake, "library.json": json.dumps(platformio, indent=2) + "\n",
            "idf_component.yml": idf, "README.md": readme, **zephyr}


def manifests(fmt, lib, generated, labels=None):
    """The manifest files of a library of format ``fmt``: ``relative path -> text``.

    Example:
        >>> sorted(manifests("arduino", "tinymoe_birds", firmware_sources(tflite_bytes)))
        ['README.md', 'library.properties']
    """
    facts = _facts(generated)
    return _arduino(lib, facts) if fmt == "arduino" else _cmake(lib, facts)
