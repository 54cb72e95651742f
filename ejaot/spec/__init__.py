"""What a kernel is to the engine: its declaration (kernel.py), where kernels are found
(registry.py), which sources its artifacts depend on (sources.py) and how its dimensions
split over a device mesh (mesh.py). Plain data: nothing here imports jax at module level,
and neither the build nor the runtime is imported."""
from .kernel import ArrayArg, Backend, KernelSpec, StaticArg, TreeArg
from .sources import COLLECTION

__all__ = ["ArrayArg", "Backend", "COLLECTION", "KernelSpec", "StaticArg", "TreeArg"]
