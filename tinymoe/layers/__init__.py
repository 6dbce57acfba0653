"""Keras layers of tinymoe, each registered for serialisation under ``tinymoe>``."""

from tinymoe.layers.activations import get_activation
from tinymoe.layers.attention import SeparableSelfAttention
from tinymoe.layers.conv import ConvBNAct, InvertedResidual, make_divisible
from tinymoe.layers.feedforward import FeedForward, feedforward_weights
from tinymoe.layers.moe import EXPERT_WEIGHTS, MoEFeedForward
from tinymoe.layers.routing_ops import load_balancing_loss, top_k_mask
from tinymoe.layers.norm import LayerNorm
from tinymoe.layers.patches import PatchFold, PatchUnfold
from tinymoe.layers.transformer import MobileViTV2Block, TransformerLayer

__all__ = [
    "EXPERT_WEIGHTS", "ConvBNAct", "FeedForward", "InvertedResidual", "LayerNorm", "MobileViTV2Block",
    "MoEFeedForward", "PatchFold", "PatchUnfold", "SeparableSelfAttention", "TransformerLayer",
    "feedforward_weights", "get_activation", "load_balancing_loss", "make_divisible", "top_k_mask",
]
