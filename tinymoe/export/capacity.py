"""Expert capacity calibrated at export, as the int8 ranges are.

A sparse mixture-of-experts layer gives each expert ``ceil(factor x units / E)`` slots per
image (units: patches, or tokens for per-token routing); a patch beyond its expert's slots
skips the feed-forward. How many slots a model needs depends on how its router spreads one
image's patches, which only data shows. :func:`calibrate_capacity` picks, per MoE layer, the
smallest factor on a grid whose sparse int8 model agrees with the masked int8 model (every
expert on every patch, nothing dropped) on at least ``min_agreement`` of the images (top-1).
"""

import dataclasses
import math

import numpy as np

from tinymoe.layers.routing_ops import expert_capacity


def capacity_grid(units, num_experts, low=1.0, high=4.0):
    """The capacity factors from ``low`` to ``high`` that change the slot count: one per slot
    count k, the factor ``k x E / units`` to 6 decimals (rounded down if rounding to
    nearest would give k + 1 slots).

    Example:
        >>> capacity_grid(16, 4)
        [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0]
    """
    factors = []
    smallest = max(1, math.ceil(low * units / num_experts - 1e-9))
    largest = min(int(units), math.floor(high * units / num_experts + 1e-9))
    for slots in range(smallest, largest + 1):
        factor = round(slots * num_experts / units, 6)
        if expert_capacity(factor, units, num_experts) > slots:  # rounded up past k
            factor = math.floor(slots * num_experts / units * 1e6) / 1e6
        factors.append(float(factor))
    if not factors:  # one slot count covers the whole range
        factors.append(float(high))
    return factors


@dataclasses.dataclass
class CapacityReport:
    """What :func:`calibrate_capacity` chose and measured.

    Attributes:
        layers: ``{layer key: {"capacity_factor", "slots", "units", "num_experts",
            "agreement", "tried": [[factor, agreement], ...]}}``; a layer's agreement is
            that of the model with the layers before it at their chosen factors and the
            layers after it with room for every unit (in LiteRT); the last layer also has
            ``"tflm_tried"``, its factors checked in TFLite Micro.
        agreement: top-1 agreement of the chosen sparse int8 model with the masked one, in
            TFLite Micro.
        min_agreement: the target.
        images: how many images were compared.
        reached: whether the target was met (if not, every layer has its largest factor).
        search_agreement: the agreement of the search's last candidate in LiteRT.

    Example:
        >>> report.as_dict()["layers"]["stage4_mvit/transformer_3"]["capacity_factor"]
        2.0
    """

    layers: dict
    agreement: float
    min_agreement: float
    images: int
    reached: bool
    search_agreement: float = float("nan")

    @property
    def factors(self):
        """``{layer key: capacity factor}``, what :func:`tinymoe.models.with_dispatch` takes."""
        return {key: layer["capacity_factor"] for key, layer in self.layers.items()}

    def as_dict(self):
        return dataclasses.asdict(self)

    def lines(self):
        """One line per layer and one for the agreement, e.g. for a report or a C comment."""
        lines = []
        for key, layer in self.layers.items():
            units = "patches" if layer["routing"] == "patch" else "tokens"
            lines.append(f"{key}: capacity factor {layer['capacity_factor']:g}, "
                         f"{layer['slots']} slots per expert ({layer['units']} {units}, "
                         f"{layer['num_experts']} experts)")
        lines.append(f"sparse/masked int8 top-1 agreement {self.agreement:.4f} on "
                     f"{self.images} images (target {self.min_agreement:g}"
                     f"{'' if self.reached else ', NOT reached'})")
        return lines


def calibrate_capacity(model, images, calibration_images, min_agreement=0.98, low=1.0,
                       high=4.0, progress=True):
    """Per MoE layer, the smallest capacity factor whose sparse int8 model agrees with the
    masked int8 model on at least ``min_agreement`` of ``images`` (top-1).

    Layers are calibrated in graph order: each on the :func:`capacity_grid` from ``low`` up,
    the layers before it at their chosen factors and those after it with room for every
    unit, so that the last layer's measurement is that of the model returned. Candidates are
    scored in LiteRT's optimised int8 kernels (about 5x faster than TFLite Micro, whose
    reference kernels differ by a rounding step in some ops); the choice is then confirmed
    in TFLite Micro, the last layer taking larger factors until it agrees there too.

    Args:
        model: a Keras model with sparse-capable (top-1) MoE layers.
        images: the images compared (calibration and validation images, never test).
        calibration_images: the images that calibrate the int8 ranges of every conversion.
        min_agreement: the top-1 agreement to reach.
        low, high: the factor range searched.
        progress: a progress bar over the conversions.

    Returns:
        (the int8 ``.tflite`` bytes of the chosen sparse model, :class:`CapacityReport`).

    Example:
        >>> tflite_bytes, report = calibrate_capacity(model, x_val, x_train[:200])
        >>> report.factors
        {'stage4_mvit/transformer_3': 2.0}
    """
    from tinymoe.progress import progress_bar

    from tinymoe.export.check import TflmUnsupportedError, check_tflm
    from tinymoe.export.convert import to_tflite
    from tinymoe.export.runtime import litert_invoke, tflm_invoke
    from tinymoe.models import moe_layers, with_dispatch

    layers = moe_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no mixture-of-experts layer to calibrate.")
    # Per-image layers have no slots to size: their sparse form runs the chosen expert on
    # every token. Only their agreement with the masked form is measured.
    layers = {key: layer for key, layer in layers.items() if layer.routing != "image"}
    if not 0.0 < min_agreement <= 1.0:
        raise ValueError(f"min_agreement must lie in (0, 1], got {min_agreement}.")
    images = np.asarray(images, np.float32)
    if not len(images):
        raise ValueError("Capacity calibration needs at least one image.")

    def top1(tflite_bytes, runtime="litert"):
        if runtime == "tflm":
            return np.argmax(tflm_invoke(tflite_bytes, images), axis=1)
        return np.argmax(litert_invoke(tflite_bytes, images, reference_kernels=False), axis=1)

    def convert(factors):
        return to_tflite(with_dispatch(model, "sparse", factors), calibration_images,
                         verify=False)

    # Steps: the masked model, each factor tried per layer (the search stops at the first
    # that agrees), and each check in TFLite Micro (the first, then the last layer's larger
    # factors, which the search did not try): at most this many, each an int8 model.
    most = 2 + sum(len(capacity_grid(layer.dispatch_units(), layer.num_experts, low, high))
                   for layer in layers.values())
    bar = progress_bar(total=most, desc="calibrating expert capacity", unit="int8 model",
                       disable=not progress)
    masked = to_tflite(with_dispatch(model, "masked"), calibration_images)
    reference = top1(masked)
    bar.update()
    # Room for every unit: E slots of units / E each, i.e. a factor of E.
    factors = {key: float(layer.num_experts) for key, layer in layers.items()}
    report, chosen, agreement = {}, None, 0.0
    if not layers:
        chosen = convert(1.0)
        agreement = float(np.mean(top1(chosen) == reference))
    for key, layer in layers.items():
        units, experts = layer.dispatch_units(), layer.num_experts
        tried = []
        for factor in capacity_grid(units, experts, low, high):
            factors[key] = factor
            chosen = convert(factors)
            agreement = float(np.mean(top1(chosen) == reference))
            tried.append([factor, agreement])
            bar.update()
            bar.set_postfix_str(f"{key} x{factor:g}: {agreement:.3f}")
            if agreement >= min_agreement:
                break
        report[key] = {"capacity_factor": factors[key], "num_experts": experts,
                       "slots": expert_capacity(factors[key], units, experts), "units": units,
                       "routing": layer.routing, "agreement": agreement, "tried": tried}
    # Confirmed in TFLite Micro, where near-ties may fall the other way: while short of the
    # target, the last layer (whose measurement is the whole model's) takes the next factor.
    search_agreement = agreement
    larger = []
    if layers:
        key, layer = list(layers.items())[-1]
        units, experts = layer.dispatch_units(), layer.num_experts
        larger = [f for f in capacity_grid(units, experts, low, high) if f > factors[key]]
    reference = top1(masked, "tflm")
    if not layers:
        agreement = float(np.mean(top1(chosen, "tflm") == reference))
        bar.update()
    while layers:
        agreement = float(np.mean(top1(chosen, "tflm") == reference))
        bar.update()
        bar.set_postfix_str(f"TFLite Micro, {key} x{factors[key]:g}: {agreement:.3f}")
        report[key]["tflm_tried"] = report[key].get("tflm_tried", []) + [
            [factors[key], agreement]]
        if agreement >= min_agreement or not larger:
            break
        factors[key] = larger.pop(0)
        chosen = convert(factors)
        report[key].update(capacity_factor=factors[key],
                           slots=expert_capacity(factors[key], units, experts))
    bar.total = bar.n  # it stopped early: done
    bar.refresh()
    bar.close()
    check = check_tflm(chosen)
    if not check.ok:
        raise TflmUnsupportedError(
            f"The converted model does not run in TFLite Micro: {check.message}",
            check.missing_ops)
    return chosen, CapacityReport(report, agreement, float(min_agreement), int(len(images)),
                                  agreement >= min_agreement, search_agreement)
