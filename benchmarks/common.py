"""What every benchmark script records beside its numbers: the command and the machine."""

import os
import platform
import sys

import dataclasses

import tinymoe
from tinymoe.files import atomic_path, write_json
from tinymoe.models import MCU_LAYOUT

# The MCU layout before the speed work without expansion in the stride-2 blocks of stages 4
# and 5: a speed ablation that did not train (benchmarks/README.md, "Time on the
# microcontroller").
MCU_EXPAND1_LAYOUT = MCU_LAYOUT[:3] + tuple(dataclasses.replace(stage, expand_ratio=1)
                                            for stage in MCU_LAYOUT[3:])


def run_meta(start, **extra):
    """The command line, the machine and the wall time since ``start`` (``time.time()``)."""
    import time

    return {"command": "python " + " ".join(sys.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}, tensorflow {tinymoe.tf.__version__}",
            "wall_s": round(time.time() - start, 1), **extra}


def write_results(out, payload, markdown_text):
    """Writes ``out.json`` and ``out.md`` atomically and prints the Markdown."""
    write_json(f"{out}.json", payload)
    with atomic_path(f"{out}.md") as tmp, open(tmp, "w") as handle:
        handle.write(markdown_text)
    print(markdown_text)
