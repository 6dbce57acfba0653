"""The results file of benchmarks/cub100_accuracy.py: its Markdown table, and the rows and
runs already in it (one seed per run appends to the same file)."""

import numpy as np
from harness import read_results


def start_of(meta):
    """Where the models of a results file started: shipped weights, a pretrained peer, or
    random weights."""
    starts = [f"MobileViTv2 from `{meta['weights']}` weights"] if meta.get("weights") else []
    starts += [f"{name} from {path}" for name, path in (meta.get("peer_weights") or {}).items()]
    return "; ".join(starts) or "random weights"


def markdown(rows, meta):
    lines = [f"# cub100 accuracy ({meta['size']}x{meta['size']})", "",
             *[f"Command: `{run['command']}` ({run['wall_s']} s"
               + (f", seeds {run['seeds']})  " if "seeds" in run else ")  ")
               for run in meta.get("runs", [meta])],
             f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s']} s; seeds {sorted({r['seed'] for r in rows})}; "
             f"{meta['images']}  ",
             f"Start: {start_of(meta)}; recipe "
             f"{meta.get('recipe') or 'the default'}"
             + (f"; {meta['train_per_class']} training images per species"
                if meta.get("train_per_class") else "")
             + (f"; MoEs upcycled with {meta['upcycling']}" if meta.get("upcycling") else ""),
             "",
             "| variant | seed | params | MACs | epochs | train img/s | val top-1 | test top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['epochs']} | {r['train_images_per_s']} | {r['val_top1']:.3f} | "
                     f"{r['test_top1']:.3f} |")
    int8 = [r for r in rows if "int8_test_top1" in r]
    if int8:
        lines += ["", "int8 (post-training, MoE with sparse dispatch), test split in TFLite "
                  "Micro; Cortex-M3: the firmware app under QEMU (arena_used_bytes(), flash of "
                  "the whole image); model array: the .tflite as the firmware embeds it.", "",
                  "| variant | seed | float test top-1 | int8 test top-1 | .tflite bytes | "
                  "model array bytes | Cortex-M3 arena | Cortex-M3 flash |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in int8:
            lines.append(f"| {r['variant']} | {r['seed']} | {r['test_top1']:.3f} | "
                         f"{r['int8_test_top1']:.3f} | {r['tflite_bytes']:,} | "
                         f"{r['device_model_bytes']:,} | "
                         f"{bytes_or_dash(r.get('cortex_m3_arena_bytes'))} | "
                         f"{bytes_or_dash(r.get('cortex_m3_flash_bytes'))} |")
    seeds = {r["seed"] for r in rows}
    if len(seeds) > 1:
        lines += ["", f"Over seeds {sorted(seeds)}: mean (lowest, highest).", "",
                  "| variant | seeds | test top-1 | int8 test top-1 |", "|---|---|---|---|"]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == variant]
            cells = []
            for key in ("test_top1", "int8_test_top1"):
                values = [r[key] for r in mine if key in r]
                cells.append(f"{np.mean(values):.3f} ({min(values):.3f}, {max(values):.3f})"
                             if values else "—")
            lines.append(f"| {variant} | {len(mine)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def bytes_or_dash(value):
    """``value`` with thousands separators, or a dash where it was not measured."""
    return "—" if value is None else f"{value:,}"


def check_size(out, size):
    """Refuses to add ``size`` results to a results file of another input size."""
    _, _, meta = read_results(out)
    if meta and meta["size"] != size:
        raise SystemExit(f"{out}.json holds {meta['size']}x{meta['size']} results, not "
                         f"{size}x{size}: choose another --out")
