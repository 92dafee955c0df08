"""Stage 1, the graph: capture a model as an aten graph of fake tensors, and the facts about its
nodes and memory that later stages read."""
from fxroof.graph.capture import Captured, CaptureError, capture
from fxroof.graph.memory import Footprint, footprint

__all__ = ["CaptureError", "Captured", "Footprint", "capture", "footprint"]
