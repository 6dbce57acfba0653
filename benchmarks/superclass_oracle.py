"""Would a perfect router help? Per-image MoEs with a super-class router, scored as their
routers route and with every image sent to its label's super-class expert
(:func:`tinymoe.diagnosis.superclass_oracle`), on the validation split, in float.

If the oracle scores no better, the experts have not specialised in their super-classes and
no router can make them earn their flash; if it does, the router is what holds them back.
Each ``--models`` entry is ``LABEL=KERAS``; data as in ``moe_routing_int8.py``.

Example:
    python benchmarks/superclass_oracle.py --tinyimagenet /work/data/tiny-imagenet-200 \\
        --models image_superclass=runs/pretrain/mobilevit_v2_mcu_moe_image_superclass/best.keras \\
        --images 2000 --out benchmarks/results/superclass_oracle_tinyimagenet
"""

import time

from harness import run_meta, write_results
from moe_routing_int8 import load_val, models_and_data_parser

from tinymoe.diagnosis import superclass_oracle
from tinymoe.pipeline import load_model


def markdown(rows, meta):
    lines = ["# Routing by the true super-class (the oracle) against the router", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; wall time {meta['wall_s']} s; "
             f"{meta['images']} validation images (a seeded sample), float", "",
             "| model | router top-1 | oracle top-1 | oracle - router | p (McNemar) | "
             "router picks the super-class's expert |", "|---|---|---|---|---|---|"]
    for r in rows:
        picks = ", ".join(f"{100 * v:.1f}%" for v in r["router_superclass_top1"].values())
        lines.append(f"| {r['variant']} | {r['top1']:.4f} | {r['top1_oracle']:.4f} | "
                     f"{100 * (r['top1_oracle'] - r['top1']):+.2f} points | "
                     f"{r['paired']['p_value']:.3g} | {picks} |")
    lines += ["", *(f"- {r['variant']}: {r['verdict']}" for r in rows)]
    return "\n".join(lines) + "\n"


def main():
    parser = models_and_data_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="results path without extension")
    args = parser.parse_args()
    start = time.time()
    rows, cache = [], {}
    for entry in args.models:
        label, path = entry.split("=", 1)
        model = load_model(path)
        size = int(model.input_shape[1])
        if size not in cache:
            cache[size] = load_val(args, size)[1:]
        x_val, y_val = cache[size]
        rows.append({"variant": label, "model": path,
                     **superclass_oracle(model, x_val, y_val)})
        print(rows[-1]["verdict"], flush=True)
    meta = run_meta(start, images=args.images)
    write_results(args.out, {"meta": meta, "rows": rows}, markdown(rows, meta))


if __name__ == "__main__":
    main()
