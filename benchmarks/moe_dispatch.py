"""Sparse (fixed-capacity) against masked MoE dispatch, int8 in TFLite Micro. Run by hand;
writes JSON and a Markdown table.

1. Agreement: the trained flagship converted twice (masked, sparse), top-1 agreement of the
   two int8 models on the cub100 validation split, run in TFLite Micro, the same for the two
   float models, and the share of patches over their expert's capacity in each MoE layer
   (from the float routing).
2. Host latency in the TFLite Micro interpreter, all models in one process, invoked in turn
   (alternating), median of --runs invocations each: the flagship's largest MoE layer alone
   (masked and sparse), the whole flagship (masked and sparse) and the dense backbone of the
   same width (mobilevit_v2_050). Latency does not depend on the weight values, so the
   trained weights are loaded into a model built at --latency-size.

--part agreement or --part latency runs one of the two.

Example:
    python benchmarks/moe_dispatch.py --model RUNS/seed0/moe_050_cluster/best.keras \\
        --size 96 --latency-size 128 --out benchmarks/results/moe_dispatch
"""

import argparse
import sys
import time

import numpy as np
from common import run_meta, write_results

from tinymoe.backend import keras
from tinymoe.data import load_dataset
from tinymoe.export import op_table, quantize, tflm_invoke, to_tflite
from tinymoe.layers import MoEFeedForward
from tinymoe.layers.routing_ops import expert_capacity
from tinymoe.models import create_model, trace, with_dispatch
from tinymoe.pipeline import load_model


def agreement(model, data, capacity_factors, priority="gate"):
    """Top-1 agreement of the sparse int8 model (each capacity factor) with the masked one,
    and of both with the float model (whose masked and sparse forms are equal without
    overflow)."""
    x_train, _ = data.split("train")
    x_val, y_val = data.split("val")

    def predictions(dispatch, capacity_factor=1.25):
        tflite_bytes = to_tflite(with_dispatch(model, dispatch, capacity_factor, priority),
                                 x_train[:200])
        return np.argmax(tflm_invoke(tflite_bytes, x_val), axis=1)

    float_top1 = np.argmax(model.predict(x_val.astype(np.float32), verbose=0), axis=1)
    masked = predictions("masked")
    routing = moe_routing(model, x_val)
    rows = []
    for capacity_factor in capacity_factors:
        sparse = predictions("sparse", capacity_factor)
        sparse_float = with_dispatch(model, "sparse", capacity_factor, priority).predict(
            x_val.astype(np.float32), verbose=0)
        rows.append({"capacity_factor": capacity_factor,
                     "dropped_patch_share": dropped_shares(routing, capacity_factor),
                     "float_agreement": float(np.mean(np.argmax(sparse_float, 1) == float_top1)),
                     "agreement": float(np.mean(masked == sparse)),
                     "sparse_agreement_with_float": float(np.mean(sparse == float_top1)),
                     "sparse_int8_val_top1": float(np.mean(sparse == y_val))})
        print(rows[-1], flush=True)
    return {"val_images": int(len(y_val)), "priority": priority,
            "masked_int8_val_top1": float(np.mean(masked == y_val)),
            "float_val_top1": float(np.mean(float_top1 == y_val)),
            "masked_agreement_with_float": float(np.mean(masked == float_top1)),
            "capacity_factors": rows}


def agreement_lines(a, size):
    """Markdown lines of the agreement table."""
    return [f"Top-1 agreement of the sparse and masked int8 flagship on cub100 val "
            f"({a['val_images']} images, {size}x{size}; overflow priority "
            f"{a['priority']}). Float val top-1 {a['float_val_top1']:.3f}; masked int8 "
            f"{a['masked_int8_val_top1']:.3f}, agreeing with float on "
            f"{a['masked_agreement_with_float']:.4f}.", "",
            "| capacity factor | patches over capacity, per MoE layer | sparse vs masked "
            "float | sparse vs masked int8 | sparse int8 vs float | sparse val top-1 |",
            "|---|---|---|---|---|---|",
            *[f"| {r['capacity_factor']} | "
              + "; ".join(f"{k}: {v:.1%}" for k, v in r["dropped_patch_share"].items())
              + f" | {r['float_agreement']:.4f} | {r['agreement']:.4f} | "
              f"{r['sparse_agreement_with_float']:.4f} | "
              f"{r['sparse_int8_val_top1']:.3f} |" for r in a["capacity_factors"]], ""]


def moe_routing(model, images):
    """{MoE layer: (layer, chosen expert [images, patches])} of the float model."""
    _, infos = trace(model, images.astype(np.float32))
    layers = {f"{block.name}/transformer_{i}": layer.ffn for block in model.layers
              for i, layer in enumerate(getattr(block, "transformer", []))
              if isinstance(layer.ffn, MoEFeedForward)}
    return {name: (layer, infos[name]["routing"]["experts"][:, 0, :, 0])
            for name, layer in layers.items()}


def dropped_shares(routing, capacity_factor):
    """{MoE layer: share of patches over their expert's capacity} (sparse dispatch)."""
    shares = {}
    for name, (layer, experts) in routing.items():
        patches = experts.shape[1]
        capacity = expert_capacity(capacity_factor, patches, layer.num_experts)
        counts = np.stack([np.sum(experts == e, axis=1) for e in range(layer.num_experts)])
        shares[f"{name} ({patches} patches, capacity {capacity})"] = float(
            np.maximum(counts - capacity, 0).sum() / experts.size)
    return shares


def largest_moe_layer(model, images):
    """(layer, ffn inputs [B, P, N, d]) of the MoE layer with the most expert MACs."""
    _, infos = trace(model, images)
    best = None
    for block in model.layers:
        for index, layer in enumerate(getattr(block, "transformer", [])):
            if isinstance(layer.ffn, MoEFeedForward):
                tokens = infos[f"{block.name}/transformer_{index}"]["ffn_input"]
                cost = np.prod(tokens.shape[1:3]) * tokens.shape[3] * layer.ffn.hidden_dim
                if best is None or cost > best[0]:
                    best = (cost, layer.ffn, tokens)
    return best[1], best[2]


def moe_alone(layer, tokens, dispatch, capacity_factor):
    config = {**layer.get_config(), "dispatch": dispatch, "capacity_factor": capacity_factor}
    config.pop("name")
    inputs = keras.Input(tokens.shape[1:], batch_size=1)
    alone = MoEFeedForward(**config)
    model = keras.Model(inputs, alone(inputs))
    alone.set_weights(layer.get_weights())
    return to_tflite(model, tokens)


def latencies(models, runs):
    from tflite_micro.python.tflite_micro import runtime

    interpreters, inputs = {}, {}
    for name, tflite_bytes in models.items():
        interpreter = runtime.Interpreter.from_bytes(tflite_bytes)
        details = interpreter.get_input_details(0)
        params = details["quantization_parameters"]
        rng = np.random.default_rng(0)
        inputs[name] = quantize(rng.normal(size=details["shape"]), params["scales"][0],
                                params["zero_points"][0])
        interpreters[name] = interpreter
    times = {name: [] for name in models}
    for _ in range(runs + 1):  # the first round warms up and is dropped
        for name, interpreter in interpreters.items():
            interpreter.set_input(inputs[name], 0)
            start = time.perf_counter()
            interpreter.invoke()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values[1:]) * 1000) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="trained flagship MoE .keras model")
    parser.add_argument("--data", default="../shared/data/cub100")
    parser.add_argument("--size", type=int, default=96, help="input size the model was trained at")
    parser.add_argument("--latency-size", type=int, default=128)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--agreement-factors", type=float, nargs="+",
                        default=[1.25, 1.5, 2.0, 4.0],
                        help="capacity factors whose int8 agreement with masked is measured")
    parser.add_argument("--priority", choices=("gate", "order"), default="gate",
                        help="which patches keep their slots at overflow")
    parser.add_argument("--part", choices=("all", "agreement", "latency"), default="all")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    start = time.time()

    trained = load_model(args.model)
    data = load_dataset(args.data, args.size)
    result, lines = {}, ["# Sparse vs masked MoE dispatch (int8, TFLite Micro)", "",
                         "Command: `python " + " ".join(sys.argv) + "`  ", ""]
    if args.part in ("all", "agreement"):
        result["agreement"] = agreement(trained, data, args.agreement_factors, args.priority)
        print(result, flush=True)
        lines += agreement_lines(result["agreement"], args.size)
    if args.part == "agreement":
        meta = run_meta(start, capacity_factor=args.capacity_factor)
        lines[3:3] = [f"Machine: {meta['machine']}; wall time {meta['wall_s']} s  "]
        write_results(args.out, {"meta": meta, **result}, "\n".join(lines) + "\n")
        return

    size = args.latency_size
    flagship = create_model("mobilevit_v2_moe_050", num_classes=data.num_classes,
                            input_shape=(size, size, 3))
    flagship.set_weights(trained.get_weights())
    calibration = load_dataset(args.data, size).split("train")[0][:64].astype(np.float32)
    layer, tokens = largest_moe_layer(flagship, calibration[:32])
    dense = create_model("mobilevit_v2_050", num_classes=data.num_classes,
                         input_shape=(size, size, 3))
    models = {
        "moe_layer_masked": moe_alone(layer, tokens, "masked", args.capacity_factor),
        "moe_layer_sparse": moe_alone(layer, tokens, "sparse", args.capacity_factor),
        "flagship_masked": to_tflite(with_dispatch(flagship, "masked"), calibration),
        "flagship_sparse": to_tflite(with_dispatch(flagship, "sparse", args.capacity_factor),
                                     calibration),
        "dense_050": to_tflite(dense, calibration),
    }
    ms = latencies(models, args.runs)
    macs = {name: int(sum(row["macs"] for row in op_table(b))) for name, b in models.items()}
    result["latency"] = {
        "input_size": size, "moe_layer": layer.name, "moe_layer_tokens": list(tokens.shape[1:]),
        "median_ms": ms, "macs": macs, "runs": args.runs,
        "moe_layer_sparse_over_masked": ms["moe_layer_sparse"] / ms["moe_layer_masked"],
        "flagship_sparse_over_dense": ms["flagship_sparse"] / ms["dense_050"],
        "flagship_sparse_over_masked": ms["flagship_sparse"] / ms["flagship_masked"],
    }
    meta = run_meta(start, capacity_factor=args.capacity_factor)
    meta["machine"] += ", TFLite Micro host interpreter"
    lat = result["latency"]
    lines[3:3] = [f"Machine: {meta['machine']}; capacity factor {args.capacity_factor}; "
                  f"wall time {meta['wall_s']} s  "]
    lines += [f"Host latency at {size}x{size}, median of {args.runs} alternating runs; "
              f"MoE layer: {lat['moe_layer']}, tokens {lat['moe_layer_tokens']}.", "",
              "| model | MACs | median ms |", "|---|---|---|"]
    for name in models:
        lines.append(f"| {name} | {macs[name]:,} | {ms[name]:.2f} |")
    lines += ["", f"- MoE layer alone, sparse / masked: "
              f"{lat['moe_layer_sparse_over_masked']:.3f} (target < 0.5)",
              f"- whole flagship, sparse / dense backbone (mobilevit_v2_050): "
              f"{lat['flagship_sparse_over_dense']:.3f} (target <= 1.3)",
              f"- whole flagship, sparse / masked: {lat['flagship_sparse_over_masked']:.3f}"]
    write_results(args.out, {"meta": meta, **result}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
