"""Pallas kernels lowered to Mosaic (TPUs); tpu_custom_call is export-stable."""
from . import BackendInfo

BACKEND = BackendInfo(name="pallas_tpu", platforms=("tpu",), rank=10, call_name="pallas",
                      build_cost=3.0)   # Mosaic runs its own compiler
