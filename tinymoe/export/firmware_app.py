"""Build the firmware app of ``firmware_export/`` against TensorFlow Lite Micro's C++ sources
and run it: natively on the host, as a Cortex-M3 image (reference kernels, QEMU's mps2-an385
board) or as a Cortex-M7 image (hard float, CMSIS-NN kernels: what an STM32F746 runs; QEMU's
mps2-an500 board).

The app is the one a board runs; here it reads the image from a file (semihosting under QEMU)
and prints its raw int8 output, ``arena_used_bytes()`` and, on Cortex-M, the flash footprint
and the instructions executed per inference and per op type. QEMU counts instructions
exactly but models no cycles, caches or flash wait states: milliseconds derived from them
(:func:`tinymoe.export.report.milliseconds_at`) assume one instruction per cycle.
The TFLM library is built once per machine from the pinned source tarball (see
``firmware_export/Makefile``: 10-20 minutes the first time on 2 cores, cached after).
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

# tinymoe's target names -> firmware_export/Makefile's TARGET.
TARGETS = {"host": "host", "cortex-m3": "cortex-m3-qemu", "cortex-m7": "cortex-m7-qemu",
           "cortex-m4f": "cortex-m4f-qemu"}


class FirmwareError(RuntimeError):
    """The firmware app could not be built or did not run; the message holds its output.

    Example:
        >>> run_firmware(tflite_bytes, images, target="cortex-m3")  # raises if QEMU is missing
    """


@dataclasses.dataclass(frozen=True)
class FirmwareRun:
    """What the firmware app printed, parsed.

    Attributes:
        target: ``"host"``, ``"cortex-m3"`` or ``"cortex-m7"``.
        outputs: int8 array [N, classes], the model's raw output for each image.
        top: per image, the printed top labels as ``(label, score)`` (score in hundredths).
        arena_used_bytes: ``MicroInterpreter::arena_used_bytes()`` after the first invoke.
        arena_size_bytes: ``kTensorArenaSize`` the app was built with.
        flash_bytes: on Cortex-M, ``.text + .rodata + .data`` of the whole image (else None).
        model_array_bytes: the size of the model array the app embeds (the ``.tflite``
            stripped for the device, :func:`tinymoe.export.strip_for_device`).
        instructions: on Cortex-M (QEMU), the instructions one ``Invoke()`` executed, the
            largest over the images (counted to within 40); None on the host.
        instructions_by_op: on Cortex-M, op type -> ``{"instructions", "calls"}`` of the
            image with the most instructions, most expensive first; None on the host.
        allocations: with ``record_allocations``, TFLM's RecordingMicroAllocator figures:
            ``head`` (activations), ``tail`` (persistent: per-op state, tensor structs,
            quantisation data) and ``by_type`` (name -> bytes); else None.
        log: everything the last run printed.

    Example:
        >>> run = run_firmware(tflite_bytes, images[:1], target="cortex-m3")
        >>> run.outputs[0], run.top[0][0], run.arena_used_bytes
    """

    target: str
    outputs: np.ndarray
    top: list
    arena_used_bytes: int
    arena_size_bytes: int
    flash_bytes: int | None
    model_array_bytes: int
    instructions: int | None
    instructions_by_op: dict | None
    allocations: dict | None
    log: str


def firmware_dir():
    """The ``firmware_export/`` folder: ``$TINYMOE_FIRMWARE_DIR`` or the repository's own.

    Example:
        >>> os.path.isfile(os.path.join(firmware_dir(), "Makefile"))
        True
    """
    folder = os.environ.get("TINYMOE_FIRMWARE_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "firmware_export")
    if not os.path.isfile(os.path.join(folder, "Makefile")):
        raise FirmwareError(f"No firmware app in {folder!r}: set TINYMOE_FIRMWARE_DIR to the "
                            "repository's firmware_export folder.")
    return folder


def missing_requirements(target):
    """What building and running for ``target`` lacks here, in words (empty when nothing).

    ``make check-toolchain`` in ``firmware_export/`` (the check ``make test`` uses too): the
    target's compiler builds a small C++ program with the app's flags (for Cortex-M, the
    C++ headers and C library of Debian's libstdc++-arm-none-eabi-newlib and
    libnewlib-arm-none-eabi, not only the compiler) and QEMU is on PATH; then TFLM's source
    tree (the pinned tarball in ``shared/third_party/``, or ``TFLM_TARBALL`` / ``TFLM_DIR``
    in the environment).

    Example:
        >>> missing_requirements("host")
        []
    """
    _target(target)
    if shutil.which("make") is None:
        return ["make (not on PATH)"]
    code, log = _make(target, "check-toolchain")
    missing = [line for line in log.strip().splitlines()
               if not line.startswith("make")] if code != 0 else []
    if not missing:
        code, log = _make(target, "print-tflm")
        if code != 0:
            missing.append(log.strip().splitlines()[-1])
    return missing


def tflm_paths(target="host"):
    """``{"tarball": ..., "library": ...}``: TFLM's sources and the library built from them.

    Example:
        >>> tflm_paths("cortex-m3")["library"].endswith("libtensorflow-microlite.a")
        True
    """
    code, log = _make(_target(target), "print-tflm")
    if code != 0:
        raise FirmwareError(log.strip())
    return dict(line.split(" ", 1) for line in log.strip().splitlines())


def _target(target):
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}.")
    return target


def _make(target, *args, timeout=3600):
    env = dict(os.environ)
    # TFLM's Makefile runs Python scripts that import numpy and Pillow: ours has both.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    command = ["make", "--no-print-directory", "-s", "-C", firmware_dir(),
               f"TARGET={TARGETS[target]}", *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise FirmwareError(f"{' '.join(command)} took more than {timeout} s.") from error
    return result.returncode, result.stdout + result.stderr


def build_tflm(target="host"):
    """Builds (or finds in the cache) TFLM's library for ``target``; returns its path.

    Example:
        >>> build_tflm("cortex-m3")  # 10-20 minutes the first time, then instant
    """
    code, log = _make(_target(target), "tflm")
    if code != 0:
        raise FirmwareError(f"Building TensorFlow Lite Micro for {target} failed:\n"
                            + log[-3000:])
    return tflm_paths(target)["library"]


def _parse(log, num_classes):
    hex_output = "".join(re.findall(r"int8 output: ([0-9a-f]+)", log))
    if len(hex_output) != 2 * num_classes:
        raise FirmwareError("The firmware app printed no complete output:\n" + log[-3000:])
    outputs = np.frombuffer(bytes.fromhex(hex_output), np.uint8).astype(np.int8)
    top = [(label, int(sign + whole) * 100 + (-1 if sign else 1) * int(hundredths))
           for label, sign, whole, hundredths in
           re.findall(r"^\d+\. (.*) \((-?)(\d+)\.(\d\d)\)\r?$", log, flags=re.M)]
    return outputs, top


def _number(pattern, log):
    match = re.search(pattern, log)
    return int(match.group(1)) if match else None


def _instructions(log):
    """(instructions per inference, {op: {"instructions", "calls"}}) the app printed under
    QEMU, or (None, None)."""
    total = _number(r"Instructions per inference: (\d+)", log)
    if total is None:
        return None, None
    by_op = {name: {"instructions": int(count), "calls": int(calls)} for name, count, calls in
             re.findall(r"^Op instructions: (\S+) (\d+) (\d+)\r?$", log, flags=re.M)}
    return total, dict(sorted(by_op.items(), key=lambda item: -item[1]["instructions"]))


def _allocations(log):
    by_type = {name: int(used) for name, used in re.findall(
        r"\[RecordingMicroAllocator\] '(.*?)' used (\d+) bytes", log)}
    return {"head": _number(r"Arena allocation head (\d+) bytes", log),
            "tail": _number(r"Arena allocation tail (\d+) bytes", log), "by_type": by_type}


def run_firmware(tflite_bytes, images, target="host", labels=None, arena_bytes=None,
                 workdir=None, record_allocations=False):
    """Exports the model, builds the firmware app for ``target`` and classifies ``images``.

    Args:
        tflite_bytes: a full-int8 ``.tflite`` model.
        images: uint8-valued array [N, H, W, C] (0..255), the model's input size.
        target: ``"host"``, ``"cortex-m3"`` (QEMU, mps2-an385) or ``"cortex-m7"`` (QEMU,
            mps2-an500, CMSIS-NN kernels).
        labels: class names (default ``class_0 ...``).
        arena_bytes: the measured smallest arena for ``kTensorArenaSize`` (+10%); None
            measures it in the TFLM Python interpreter.
        workdir: where to put the generated files and the build (default: a temporary folder,
            removed afterwards).
        record_allocations: build with TFLM's RecordingMicroInterpreter and report where the
            arena goes (its bookkeeping adds a few hundred bytes to the tail).

    Returns:
        :class:`FirmwareRun`.

    Example:
        >>> run = run_firmware(tflite_bytes, images[:2], target="cortex-m3")
        >>> run.arena_used_bytes, run.flash_bytes
    """
    from tinymoe.export.firmware_files import write_firmware

    target = _target(target)
    missing = missing_requirements(target)
    if missing:
        raise FirmwareError(f"The {target} build lacks: {'; '.join(missing)}"
                            + (" (make -C firmware_export cortex-m-tools installs the Debian "
                               "packages)." if target != "host" else "."))
    pixels = np.asarray(images)
    if pixels.ndim != 4 or np.any(pixels < 0) or np.any(pixels > 255) or np.any(
            pixels != np.round(pixels)):
        raise ValueError("images must be whole pixel values 0..255 of shape [N, H, W, C], got "
                         f"shape {pixels.shape}.")
    owned = workdir is None
    workdir = tempfile.mkdtemp(prefix="tinymoe-firmware-") if owned else workdir
    try:
        generated = os.path.join(os.path.abspath(workdir), "generated")
        build = os.path.join(os.path.abspath(workdir),
                             "build-record" if record_allocations else "build")
        flags = ["RECORD_ALLOCATIONS=1"] if record_allocations else []
        write_firmware(tflite_bytes, generated, name="model", labels=labels,
                       arena_bytes=arena_bytes)
        build_tflm(target)
        code, log = _make(target, f"GENERATED={generated}", f"BUILD={build}", *flags)
        if code != 0:
            raise FirmwareError(f"Building the firmware app for {target} failed:\n"
                                + log[-3000:])
        settings = open(os.path.join(generated, "model_settings.h")).read()
        num_classes = _number(r"kNumClasses = (\d+);", settings)
        outputs, top, arena_used, counted = [], [], 0, (None, None)
        for i, image in enumerate(pixels.astype(np.uint8)):
            path = os.path.join(os.path.abspath(workdir), f"image_{i}.rgb")
            image.tofile(path)
            code, log = _make(target, f"GENERATED={generated}", f"BUILD={build}", *flags,
                              f"IMAGE={path}", "run", timeout=1800)
            if code != 0:
                raise FirmwareError(f"The firmware app failed on image {i} ({target}):\n"
                                    + log[-3000:])
            output, image_top = _parse(log, num_classes)
            outputs.append(output)
            top.append(image_top)
            arena_used = max(arena_used, _number(r"Arena used: (\d+) bytes", log))
            instructions = _instructions(log)
            if instructions[0] is not None and (counted[0] is None
                                                or instructions[0] > counted[0]):
                counted = instructions
        return FirmwareRun(
            target=target, outputs=np.stack(outputs), top=top, arena_used_bytes=arena_used,
            arena_size_bytes=_number(r"kTensorArenaSize = (\d+);", settings),
            flash_bytes=_number(r"Flash: (\d+) bytes", log),
            model_array_bytes=_number(r"_size = (\d+);",
                                      open(os.path.join(generated, "model_data.cc")).read()),
            instructions=counted[0], instructions_by_op=counted[1],
            allocations=_allocations(log) if record_allocations else None, log=log)
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)


def measure_on_device(tflite_bytes, target="cortex-m3", arena_bytes=None, breakdown=False):
    """The tensor arena and flash a model takes on ``target``'s build of TFLM.

    Builds the firmware app for ``target`` and classifies one grey image (the arena does not
    depend on the pixels; the instructions barely do, every shape being static). On
    Cortex-M (QEMU) the flash is that of the whole image: the model array, TFLM's code and
    the app; and the instructions of one inference are counted, in all and per op type.

    Args:
        tflite_bytes: a full-int8 ``.tflite`` model.
        target: ``"cortex-m3"``, ``"cortex-m7"`` (CMSIS-NN kernels) or ``"host"``.
        arena_bytes: an arena known to be large enough (e.g. :func:`smallest_arena`'s); None
            measures it in the Python interpreter first.
        breakdown: also run a recording build and report the arena's activations (head) and
            persistent part (tail) by allocation type.

    Returns:
        dict: ``target``, ``arena_bytes`` (``arena_used_bytes()``), ``flash_bytes`` (None on
        the host), ``model_bytes``, ``code_bytes`` (flash minus the model array),
        ``instructions`` and ``instructions_by_op`` (None on the host; see
        :class:`FirmwareRun`).

    Example:
        >>> measure_on_device(open("model.tflite", "rb").read())["arena_bytes"]
        206724
    """
    from tinymoe.export.tflite_file import model_facts

    shape = [int(d) for d in model_facts(tflite_bytes)[0][0].shape]  # LUT-compressed too
    image = np.full(shape, 128, np.uint8)
    run = run_firmware(tflite_bytes, image, target=target, arena_bytes=arena_bytes)
    result = {"target": target, "arena_bytes": run.arena_used_bytes,
              "flash_bytes": run.flash_bytes, "model_bytes": run.model_array_bytes,
              "code_bytes": None if run.flash_bytes is None
              else run.flash_bytes - run.model_array_bytes,
              "instructions": run.instructions, "instructions_by_op": run.instructions_by_op}
    if breakdown:
        recorded = run_firmware(tflite_bytes, image, target=target,
                                arena_bytes=int(arena_bytes or run.arena_used_bytes) + 4096,
                                record_allocations=True)
        result["arena_breakdown"] = recorded.allocations
    return result
