"""`tinymoe report --board`: the firmware linked with a real part's memory map, so that the
linker proves the fit or names the region that overflows (tinymoe.export.boards)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from tinymoe.backend import keras
from tinymoe.cli import main
from tinymoe.export import strip_for_device, to_tflite
from tinymoe.export import boards
from tinymoe.export.firmware_app import missing_requirements
from tinymoe.models import create_model, settle_batch_norms


def _require(target):
    missing = missing_requirements(target)
    if missing:
        message = f"{target} firmware build unavailable: {'; '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs the toolchain)")
        pytest.skip(message)


def _mcu_model(size, classes):
    keras.utils.set_random_seed(0)
    images = np.round(np.random.default_rng(4).uniform(0, 255, (8, size, size, 3)))
    model = create_model("mobilevit_v2_mcu", num_classes=classes, input_shape=(size, size, 3))
    return to_tflite(settle_batch_norms(model, images), images.astype(np.float32))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "model.tflite"
    path.write_bytes(_mcu_model(32, 10))
    return path


def test_the_table_names_five_boards_and_their_memory():
    assert len(boards.BOARDS) >= 5
    f746 = boards.board("stm32f746g_disco")
    assert f746.flash == (0x08000000, 1024 * 1024) and f746.ram[1] == 320 * 1024
    assert boards.board("nano33ble").ram[1] == 256 * 1024
    with pytest.raises(ValueError, match="Unknown board 'uno'; choose one of nano33ble"):
        boards.board("uno")
    script = boards.linker_script(f746)
    assert "ORIGIN = 0x08000000, LENGTH = 1048576" in script and ".stack (NOLOAD)" in script


def test_report_board_links_with_the_parts_memory_map(small_model, capsys):
    _require("cortex-m7")
    assert main(["report", str(small_model), "--board", "stm32f746g_disco", "--board",
                 "pico", "--json"]) == 0
    text = capsys.readouterr().out
    fits = json.loads(text[text.index("\n[") + 1:])
    f746, pico = fits
    assert f746["linked"] and f746["fits"] and not pico["linked"] and pico["fits"] is None
    model_bytes = len(strip_for_device(small_model.read_bytes())[0])
    assert model_bytes < f746["flash_used"] == f746["flash_size"] - f746["flash_margin"]
    assert f746["arena_bytes"] + f746["stack_bytes"] < f746["ram_used"] <= f746["ram_size"]
    assert f746["instructions"] > 0
    assert f"{f746['seconds_at_clock']:.2f} s at 216 MHz" in text and "FITS" in text


def test_an_overflow_is_named_by_the_linker(small_model, monkeypatch, capsys):
    """A part with 20 KB of SRAM: the arena, the interpreter and the stack do not fit,
    and ld says by how much; the export then writes nothing."""
    _require("cortex-m7")
    tiny = dataclasses.replace(boards.board("stm32f746g_disco"), key="tiny",
                               title="a tiny part", ram=(0x20000000, 20 * 1024))
    monkeypatch.setitem(boards.BOARDS, "tiny", tiny)
    fit = boards.fit_on_board(small_model.read_bytes(), "tiny")
    assert fit["linked"] and fit["fits"] is False and fit["overflows"]["RAM"] > 0
    assert fit["ram_margin"] == -fit["overflows"]["RAM"]
    assert "overflows by" in boards.format_fit(fit)
    out = small_model.parent / "lib"
    assert main(["export", str(small_model), "--out", str(out), "--board", "tiny"]) == 2
    assert "does not fit a tiny part; nothing written" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_mcu_model_verdicts_at_128px_on_the_f746_and_the_nano(tmp_path, capsys):
    """mobilevit_v2_mcu at 128x128, 100 classes (memory does not depend on the weights):
    the verdicts docs/DEPLOY.md states, with their margins."""
    _require("cortex-m7")
    _require("cortex-m4f")
    path = tmp_path / "mcu128.tflite"
    path.write_bytes(_mcu_model(128, 100))
    main(["report", str(path), "--board", "stm32f746g_disco", "--board", "nano33ble"])
    print(capsys.readouterr().out)
