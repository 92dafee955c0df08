"""Stage 3, fusion: the kernels a fusing compiler would emit from an annotated graph."""
from fxroof.fuse.fuser import Kernel, fuse, unfused

__all__ = ["Kernel", "fuse", "unfused"]
