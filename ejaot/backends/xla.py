"""Plain JAX/XLA: every platform, the reference and the last resort."""
from . import BackendInfo

BACKEND = BackendInfo(name="xla", platforms=("cpu", "cuda", "tpu"), rank=100, call_name="xla", reference=True)
