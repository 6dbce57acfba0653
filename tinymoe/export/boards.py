"""Does a model fit a real board? The firmware linked with the part's own memory map.

QEMU's MPS2 boards have megabytes of memory, so the firmware built for them fits anything.
Here the same firmware app (``firmware_export/``, TFLite Micro with CMSIS-NN for the
board's core) is linked again with a linker script of the part's flash and SRAM: the linker
then proves the fit, or names the region that overflows and by how many bytes. The time is
the instructions one inference executes on that core's build under QEMU (exact, ``-icount``),
shown at the board's clock as an instruction count, not a measured time.

What the numbers cover: the model array, TFLite Micro, the app and newlib (the image
``.text + .rodata + .data``), and in SRAM ``.data + .bss`` (the tensor arena, the
interpreter, the app's buffer of one input image) plus a 16 KB stack. A board's Arduino core or RTOS needs flash and SRAM
of its own on top; where its share is published it is listed in the notes, and the margin
must cover the rest.
"""

import dataclasses
import os
import re
import tempfile


@dataclasses.dataclass(frozen=True)
class Board:
    """One board: its part, core, clock, and the flash and SRAM a firmware may use.

    Attributes:
        key: the name ``--board`` takes.
        title, part, core: for people.
        clock_mhz: the core's clock.
        flash: (origin, bytes) of the flash region the firmware links into.
        ram: (origin, bytes) of the SRAM region that holds .data, .bss and the stack.
        target: the firmware build for its core (:data:`tinymoe.export.firmware_app.TARGETS`),
            or None where none can be built here (the fit is then not linked).
        notes: what the numbers leave out for this board.

    Example:
        >>> BOARDS["nano33ble"].ram
        (536870912, 262144)
    """

    key: str
    title: str
    part: str
    core: str
    clock_mhz: float
    flash: tuple
    ram: tuple
    target: str | None
    notes: str


KB = 1024
# The parts' memory maps as their datasheets give them; where a board's usual bootloader
# keeps the start of flash (Arduino's on the Nano 33 BLE and the Portentas, the RP2040's
# second stage), the firmware links after it.
BOARDS = {board.key: board for board in (
    Board("nano33ble", "Arduino Nano 33 BLE Sense", "nRF52840", "Cortex-M4F", 64.0,
          (0x00010000, 1024 * KB - 64 * KB), (0x20000000, 256 * KB), "cortex-m4f",
          "flash after the Arduino bootloader's first 64 KB; Mbed OS (Arduino's core) "
          "takes part of the 256 KB SRAM for its own heap, stacks and drivers"),
    Board("portenta_h7", "Arduino Portenta H7 (M7 core)", "STM32H747XI", "Cortex-M7", 480.0,
          (0x08040000, 1024 * KB - 256 * KB), (0x24000000, 512 * KB), "cortex-m7",
          "the M7's 1 MB flash bank after the 256 KB bootloader; .bss in the 512 KB AXI "
          "SRAM (another 288 KB of SRAM and 8 MB of SDRAM are not used here); Mbed OS "
          "takes part of the SRAM"),
    Board("nicla_vision", "Arduino Nicla Vision (M7 core)", "STM32H747AII6", "Cortex-M7",
          480.0, (0x08040000, 1024 * KB - 256 * KB), (0x24000000, 512 * KB), "cortex-m7",
          "as the Portenta H7, without SDRAM"),
    Board("stm32f746g_disco", "STM32F746G-DISCO", "STM32F746NG", "Cortex-M7", 216.0,
          (0x08000000, 1024 * KB), (0x20000000, 320 * KB), "cortex-m7",
          "the whole 1 MB flash and the contiguous 320 KB SRAM (DTCM, SRAM1, SRAM2) of a "
          "bare-metal firmware; the board's 8 MB SDRAM is not used here"),
    Board("esp32s3", "ESP32-S3 (e.g. ESP32-S3-DevKitC-1)", "ESP32-S3", "Xtensa LX7 (dual)",
          240.0, (0x42000000, 8 * 1024 * KB), (0x3FC88000, 512 * KB), None,
          "not linked: no Xtensa toolchain here; flash is the module's external flash, "
          "and ESP-IDF itself uses much of the 512 KB SRAM (PSRAM, where fitted, can hold "
          "the arena)"),
    Board("pico", "Raspberry Pi Pico", "RP2040", "Cortex-M0+ (dual)", 133.0,
          (0x10000100, 2 * 1024 * KB - 256), (0x20000000, 264 * KB), None,
          "not linked: no Cortex-M0+ build of TFLite Micro here (ARMv6-M code is larger than "
          "the Cortex-M4F/M7 figures); flash after the 256-byte second-stage bootloader"),
)}


def board(key):
    """The :class:`Board` called ``key`` (``tinymoe report --board KEY``).

    Example:
        >>> board("stm32f746g_disco").clock_mhz
        216.0
    """
    if key not in BOARDS:
        raise ValueError(f"Unknown board {key!r}; choose one of {', '.join(BOARDS)}.")
    return BOARDS[key]


# The stack a fit reserves: TFLM's kernels keep their scratch in the arena, and 16 KB is
# ample for the interpreter's calls (the QEMU app itself keeps 64 KB).
STACK_BYTES = 16 * KB


def linker_script(spec, stack_bytes=STACK_BYTES, scale=1):
    """A linker script for the firmware app (``firmware_export/``) with ``spec``'s memory:
    the symbols the app's start-up code reads, the board's FLASH and RAM regions (``scale``
    times larger, to measure an image that does not fit), and a stack of ``stack_bytes``.

    Example:
        >>> "LENGTH = 327680" in linker_script(board("stm32f746g_disco"))
        True
    """
    template = open(os.path.join(_firmware_dir(), "mps2_an385.ld")).read()
    memory = (f"MEMORY\n{{\n  FLASH (rx)  : ORIGIN = 0x{spec.flash[0]:08X}, "
              f"LENGTH = {spec.flash[1] * scale}\n  RAM   (rwx) : ORIGIN = 0x{spec.ram[0]:08X}, "
              f"LENGTH = {spec.ram[1] * scale}\n}}")
    template = re.sub(r"__stack_size = \w+;", f"__stack_size = {stack_bytes};", template)
    script, count = re.subn(r"MEMORY\s*\{.*?\}", memory, template, count=1, flags=re.S)
    # The stack as a section of its own, so that ld counts it in RAM's overflow; ld's
    # region overflows replace the QEMU board's checks, whose messages name its 4 MB.
    script, asserts = re.subn(r"\n\s*ASSERT\(end \+ __stack_size.*?\"\)\n",
                              "\n  .stack (NOLOAD) : ALIGN(8) { . += __stack_size; } > RAM\n",
                              script, count=1, flags=re.S)
    script, flash_asserts = re.subn(r"\n\s*ASSERT\(__flash_end <=.*?\"\)\n", "\n", script,
                                    count=1, flags=re.S)
    if count != 1 or asserts != 1 or flash_asserts != 1:
        raise ValueError("firmware_export/mps2_an385.ld no longer has the MEMORY block and "
                         "stack check that a board's linker script replaces.")
    return f"/* {spec.title} ({spec.part}): written by tinymoe for a fit check. */\n" + script


def _firmware_dir():
    from tinymoe.export.firmware_app import firmware_dir

    return firmware_dir()


def _overflows(log):
    """``{region: bytes}`` from GNU ld's "region `RAM' overflowed by N bytes" lines."""
    return {region: int(size) for region, size in
            re.findall(r"region `(\w+)' overflowed by (\d+) bytes", log)}


def _sections(elf):
    import subprocess

    text = subprocess.run(["arm-none-eabi-size", "-A", elf], capture_output=True, text=True,
                          check=True).stdout
    return {name: int(size) for name, size in re.findall(r"^(\.\S+)\s+(\d+)", text, flags=re.M)}


def fit_on_board(tflite_bytes, key, arena_bytes=None, instructions=None, workdir=None,
                 stack_bytes=STACK_BYTES):
    """Links the firmware app for board ``key`` with its memory map and says whether it fits.

    Args:
        tflite_bytes: a full-int8 ``.tflite`` model.
        key: a key of :data:`BOARDS`.
        arena_bytes: the tensor arena to reserve (``kTensorArenaSize``: +10%); None measures
            it on the board's core build under QEMU first (that run also counts the
            instructions).
        instructions: instructions per inference on the board's core, if known.
        stack_bytes: the stack reserved in SRAM.

    Returns:
        dict: ``board``, ``linked`` (False where no build for the core exists here),
        ``fits``, ``flash_used``/``flash_size``/``flash_margin``, ``ram_used``/``ram_size``/
        ``ram_margin`` (bytes; a negative margin is the overflow ld named), ``overflows``
        (``{region: bytes}``), ``instructions`` and ``seconds_at_clock`` (instructions
        over the clock, one instruction a cycle).

    Example:
        >>> fit_on_board(tflite_bytes, "stm32f746g_disco")["fits"]
        True
    """
    from tinymoe.export.firmware_app import (FirmwareError, _make, build_tflm,
                                             measure_on_device, missing_requirements)
    from tinymoe.export.firmware_files import write_firmware

    spec = board(key)
    result = {"board": spec.key, "title": spec.title, "part": spec.part, "core": spec.core,
              "clock_mhz": spec.clock_mhz, "flash_size": spec.flash[1],
              "ram_size": spec.ram[1], "linked": False, "fits": None, "notes": spec.notes,
              "instructions": instructions, "seconds_at_clock": None}
    if spec.target is None:
        return result
    missing = missing_requirements(spec.target)
    if missing:
        raise FirmwareError(f"The {spec.target} build for {spec.title} lacks: "
                            f"{'; '.join(missing)}.")
    if arena_bytes is None or instructions is None:
        device = measure_on_device(tflite_bytes, spec.target)
        arena_bytes = arena_bytes or device["arena_bytes"]
        instructions = instructions or device["instructions"]
    with tempfile.TemporaryDirectory(prefix="tinymoe-board-") as folder:
        folder = workdir or folder
        generated = os.path.join(folder, "generated")
        build = os.path.join(folder, f"build-{spec.key}")
        write_firmware(tflite_bytes, generated, arena_bytes=arena_bytes)
        build_tflm(spec.target)

        def link(scale):
            script = os.path.join(folder, f"{spec.key}-{scale}.ld")
            with open(script, "w") as handle:
                handle.write(linker_script(spec, stack_bytes, scale))
            out = f"{build}-{scale}"
            os.makedirs(out, exist_ok=True)
            code, log = _make(spec.target, f"GENERATED={generated}", f"BUILD={out}",
                              f"APP_LDFLAGS=-nostartfiles -T {script} -Wl,--gc-sections -lm")
            if code != 0 and not _overflows(log):
                raise FirmwareError(f"Linking the firmware for {spec.title} failed:\n"
                                    + log[-3000:])
            return code, log, os.path.join(out, "classify.elf")

        # The part's own map: ld proves the fit or names the overflow. An image that does not
        # fit is linked again in 16 times the memory, to count what it needs.
        code, log, elf = link(1)
        overflows = _overflows(log)
        if overflows:
            code, log, elf = link(16)
        sections = _sections(elf)
        flash_used = sum(size for name, size in sections.items()
                         if name in (".isr_vector", ".text", ".rodata", ".ARM.extab",
                                     ".ARM.exidx", ".preinit_array", ".init_array",
                                     ".fini_array", ".data"))
        ram_used = sum(sections.get(name, 0) for name in (".data", ".bss", ".stack"))
    result.update(linked=True, fits=not overflows, overflows=overflows,
                  flash_used=flash_used, flash_margin=spec.flash[1] - flash_used,
                  ram_used=ram_used, ram_margin=spec.ram[1] - ram_used,
                  arena_bytes=arena_bytes, stack_bytes=stack_bytes, instructions=instructions,
                  seconds_at_clock=instructions / (spec.clock_mhz * 1e6)
                  if instructions else None)
    return result


def format_fit(fit):
    """One board's verdict in words.

    Example:
        >>> print(format_fit(fit_on_board(tflite_bytes, "nano33ble")))
    """
    head = f"{fit['title']} ({fit['part']}, {fit['core']} at {fit['clock_mhz']:g} MHz)"
    if not fit["linked"]:
        return f"{head}: not linked here. {fit['notes']}."
    lines = [f"{head}: {'FITS' if fit['fits'] else 'DOES NOT FIT'} (linked with the part's "
             "memory map)"]
    for region, used, size, margin in (("flash", fit["flash_used"], fit["flash_size"],
                                        fit["flash_margin"]),
                                       ("SRAM", fit["ram_used"], fit["ram_size"],
                                        fit["ram_margin"])):
        words = (f"{margin:,} bytes to spare" if margin >= 0
                 else f"overflows by {-margin:,} bytes (ld: region overflowed)")
        lines.append(f"  {region}: {used:,} of {size:,} bytes, {words}")
    lines.append(f"  of SRAM: the tensor arena ({fit['arena_bytes']:,} bytes measured, +10% "
                 f"reserved), the app's input image, a {fit['stack_bytes']:,}-byte stack")
    if fit["instructions"]:
        lines.append(f"  {fit['instructions']:,} instructions per inference on the "
                     f"{fit['core']} build (QEMU, exact): {fit['seconds_at_clock']:.2f} s at "
                     f"{fit['clock_mhz']:g} MHz if each took one cycle (a count, not a "
                     "measured time)")
    lines.append(f"  not counted: {fit['notes']}")
    return "\n".join(lines)
