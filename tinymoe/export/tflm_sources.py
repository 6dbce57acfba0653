"""TensorFlow Lite Micro's sources for a model, copied from the pinned tree into a library.

An exported library (``tinymoe export --format arduino|cmake``) carries TFLM and CMSIS-NN as
sources, so that an Arduino IDE, PlatformIO, CMake or Zephyr build compiles them with the
board's own flags. The list of files is TFLM's own (its Makefile's ``list_library_sources``
and friends for a Cortex-M with CMSIS-NN kernels, what TFLM's ``create_tflm_tree.py``
reads), narrowed to what the model needs:

- kernels: the files that define the ``Register_*`` functions of the model's op types
  (read from ``micro_mutable_op_resolver.h``), and the kernel files those include the
  headers of (``add.h`` -> ``add_common.cc``), to a fixed point; no other op's kernel;
- the sources of TFLM's test helpers and of its signal-processing library (audio front
  ends) are left out; every header is kept (the op resolver's includes them all);
- CMSIS-NN is kept whole (small C files; the linker drops what no kernel calls).

Each copied file is changed in three ways a build with only ``-I src`` needs (the Arduino
IDE passes no other flag), and no other: ``.cc`` becomes ``.cpp`` (the Arduino builder
compiles ``.c``, ``.cpp`` and ``.S`` only); includes of third-party headers become paths
from ``src/`` (``flatbuffers/flatbuffers.h`` -> ``third_party/flatbuffers/include/...``);
and every TFLM file starts by defining ``TF_LITE_STATIC_MEMORY`` (the struct layout TFLM is
built with), on Arm ``CMSIS_NN``, and ``PROJECT_GENERATION`` (TFLM's switch for a tree
copied into another build: ``GetCurrentTimeTicks()`` returns 0 instead of reading a cycle
counter through a CMSIS device header the library cannot know).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

from tinymoe.export.firmware_files import resolver_method

# The Makefile options whose file lists a library carries: any Cortex-M with CMSIS-NN.
MAKE_OPTIONS = ("TARGET=cortex_m_generic", "TARGET_ARCH=cortex-m4+fp",
                "OPTIMIZED_KERNEL_DIR=cmsis_nn")
LISTS = ("list_library_sources", "list_library_headers", "list_third_party_sources",
         "list_third_party_headers")
DOWNLOADS = "tensorflow/lite/micro/tools/make/downloads/"
KERNELS = "tensorflow/lite/micro/kernels/"
# Include roots of the third-party code, as TFLM's Makefile passes them (-I...).
INCLUDE_ROOTS = ("flatbuffers/include", "gemmlowp", "ruy", "cmsis_nn", "cmsis_nn/Include",
                 "cmsis/CMSIS/Core/Include")
# Never needed by an interpreter: TFLM's test helpers, its audio signal library, kissfft.
LEFT_OUT = re.compile(r"^(signal/|tensorflow/lite/micro/(test_helper|mock_micro_graph|"
                      r"fake_micro_context|kernels/kernel_runner)|" + re.escape(DOWNLOADS)
                      + r"kissfft/)")
PRELUDE = ("// tinymoe: the flags TFLite Micro is built with, which an Arduino build cannot "
           "pass.\n#ifndef TF_LITE_STATIC_MEMORY\n#define TF_LITE_STATIC_MEMORY\n#endif\n"
           "#if defined(__arm__) && !defined(CMSIS_NN)\n#define CMSIS_NN\n#endif\n"
           "#ifndef PROJECT_GENERATION\n#define PROJECT_GENERATION\n#endif\n")
_INCLUDE = re.compile(r'^(\s*#\s*include\s*)([<"])([^>"]+)[>"]', re.M)
_REGISTER = re.compile(r"^\s*TFLMRegistration\*?\s+Register_(\w+)\(\)\s*\{", re.M)


class SourcesError(RuntimeError):
    """TFLM's sources could not be found or listed; the message says what to do.

    Example:
        >>> tflm_tree()  # raises where shared/third_party is missing
    """


def tflm_tree():
    """The unpacked pinned TFLM tree with CMSIS-NN in its ``downloads/`` (unpacked once per
    machine into the cache, as ``firmware_export/Makefile`` does for its builds).

    Example:
        >>> os.path.isdir(os.path.join(tflm_tree(), "tensorflow/lite/micro"))
        True
    """
    from tinymoe.export.firmware_app import TARGETS, _make

    code, log = _make("cortex-m7", "sources") if "cortex-m7" in TARGETS else (2, "")
    tree = re.search(r"^tree (.+)$", log, flags=re.M)
    if code != 0 or tree is None:
        raise SourcesError("No TFLite Micro sources for the library: put the pinned tarballs "
                           "in ../shared/third_party (or set TFLM_TARBALL and CMSIS_TARBALL, "
                           "or TFLM_DIR to a tree whose downloads/ are filled).\n"
                           + log.strip()[-1500:])
    return tree.group(1).strip()


def source_lists(tree):
    """TFLM's Makefile lists for :data:`MAKE_OPTIONS`, read once per tree (cached beside it).

    Returns:
        dict: list name -> paths relative to ``tree``.

    Example:
        >>> len(source_lists(tflm_tree())["list_library_sources"]) > 100
        True
    """
    key = hashlib.sha256(" ".join(MAKE_OPTIONS + LISTS).encode()).hexdigest()[:8]
    cache = os.path.join(os.path.dirname(os.path.abspath(tree)),
                         f"tinymoe-lists-{os.path.basename(tree)}-{key}.json")
    if os.path.isfile(cache):
        with open(cache) as handle:
            return json.load(handle)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""))
    lists = {}
    for name in LISTS:
        result = subprocess.run(["make", "-s", "-f", "tensorflow/lite/micro/tools/make/Makefile",
                                 *MAKE_OPTIONS, f"TARGET_TOOLCHAIN_ROOT={os.sep}", name],
                                cwd=tree, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise SourcesError(f"TFLite Micro's Makefile could not list {name}:\n"
                               + result.stderr[-1500:])
        lists[name] = [os.path.relpath(path, tree) if os.path.isabs(path) else path
                       for path in result.stdout.split() if not path.endswith("LICENSE")]
    from tinymoe.files import atomic_path

    with atomic_path(cache) as tmp, open(tmp, "w") as handle:
        json.dump(lists, handle, indent=1)
    return lists


def registrations(tree, ops):
    """The ``Register_*`` names that the resolver's ``Add*`` methods call for ``ops``.

    Example:
        >>> registrations(tflm_tree(), ["MEAN"])
        ['MEAN']
    """
    text = open(os.path.join(tree, "tensorflow/lite/micro/micro_mutable_op_resolver.h")).read()
    names = []
    for op in ops:
        method = resolver_method(op)
        match = re.search(rf"TfLiteStatus {method}\((.*?)\n  \}}", text, flags=re.S)
        called = re.findall(r"Register_(\w+)\(\)", match.group(1)) if match else []
        if not called:
            raise SourcesError(f"TFLite Micro's op resolver has no {method}() that registers "
                               f"a kernel for {op}.")
        names.extend(name for name in called if name not in names)
    return names


def _header_stems(text):
    return {os.path.splitext(os.path.basename(path))[0] for _, _, path in _INCLUDE.findall(text)
            if path.startswith(KERNELS)}


def select_sources(tree, ops):
    """The TFLM, third-party and CMSIS-NN files a library for ``ops`` carries.

    Returns:
        (sources, headers): paths relative to ``tree``; the sources to compile, the headers
        they may include.

    Example:
        >>> sources, headers = select_sources(tflm_tree(), ["CONV_2D", "SOFTMAX"])
        >>> "tensorflow/lite/micro/kernels/cmsis_nn/conv.cc" in sources
        True
    """
    lists = source_lists(tree)
    listed = [path for path in lists["list_library_sources"] + lists["list_third_party_sources"]
              if not LEFT_OUT.match(path)]
    text = {path: open(os.path.join(tree, path), errors="replace").read() for path in listed
            if path.startswith(KERNELS)}
    defines = {path: set(_REGISTER.findall(body)) for path, body in text.items()}
    needed = set(registrations(tree, ops))
    missing = needed - set().union(*defines.values())
    if missing:
        raise SourcesError(f"No kernel file of TFLite Micro defines Register_{sorted(missing)[0]}.")
    chosen = {path for path, names in defines.items() if names & needed}
    helpers = {path for path, names in defines.items() if not names}
    while True:  # the helper files whose headers the chosen files include, to a fixed point
        stems = set().union(*(_header_stems(text[path]) for path in chosen))
        more = {path for path in helpers - chosen
                if any(os.path.basename(path)[:-3] == stem
                       or os.path.basename(path).startswith(stem + "_") for stem in stems)}
        if not more:
            break
        chosen |= more
    sources = [path for path in listed if not path.startswith(KERNELS) or path in chosen]
    # Every header: the op resolver's header includes every kernel's (the signal ones too).
    # (kissfft's sources are listed among the headers: only headers are taken from there.)
    headers = [path for path in lists["list_library_headers"] + lists["list_third_party_headers"]
               if path.endswith((".h", ".hpp", ".inc")) and "/kissfft/" not in path]
    return sources, headers


def destination(path):
    """Where a tree path goes under the library's ``src/``.

    Example:
        >>> destination(DOWNLOADS + "flatbuffers/include/flatbuffers/base.h")
        'third_party/flatbuffers/include/flatbuffers/base.h'
        >>> destination("tensorflow/lite/micro/micro_log.cc")
        'tensorflow/lite/micro/micro_log.cpp'
    """
    if path.startswith(DOWNLOADS):
        path = "third_party/" + path[len(DOWNLOADS):]
    return path[:-3] + ".cpp" if path.endswith(".cc") else path


def _rewrite(text, path, tree, known):
    """``text`` of tree file ``path`` with its third-party includes made relative to src/."""
    folder = os.path.dirname(path)

    def replace(match):
        lead, _, name = match.groups()
        if os.path.normpath(os.path.join(folder, name)) in known or name in known:
            return match.group(0)  # beside the file, or from src/: found as it is
        for root in INCLUDE_ROOTS:
            candidate = os.path.normpath(os.path.join(DOWNLOADS, root, name))
            if candidate in known:
                return f'{lead}"{destination(candidate)}"'
        return match.group(0)  # a system or compiler header

    return _INCLUDE.sub(replace, text)


def copy_sources(tree, ops, src_dir):
    """Copies what :func:`select_sources` chose into ``src_dir``, rewritten for ``-I src``.

    Returns:
        list of the written paths, relative to ``src_dir``, sources first.

    Example:
        >>> copy_sources(tflm_tree(), ["CONV_2D"], "lib/src")[:1]
        ['tensorflow/lite/micro/cortex_m_generic/debug_log.cpp']
    """
    sources, headers = select_sources(tree, ops)
    known = set(sources) | set(headers)
    written = []
    for path in sources + headers:
        target = destination(path)
        full = os.path.join(src_dir, target)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(os.path.join(tree, path), encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
        text = _rewrite(text, path, tree, known)
        if not path.startswith(DOWNLOADS) or path.endswith((".cc", ".cpp")):
            text = PRELUDE + text
        with open(full, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            handle.write(text)
        written.append(target)
    licences = {"tensorflow/LICENSE": "LICENSE"} if os.path.isfile(
        os.path.join(tree, "LICENSE")) else {}
    for root in ("flatbuffers", "gemmlowp", "ruy", "cmsis_nn", "cmsis"):
        licences[f"third_party/{root}/LICENSE"] = DOWNLOADS + root + "/LICENSE"
    for target, path in licences.items():
        if os.path.isfile(os.path.join(tree, path)):
            os.makedirs(os.path.dirname(os.path.join(src_dir, target)), exist_ok=True)
            shutil.copyfile(os.path.join(tree, path), os.path.join(src_dir, target))
    return written
