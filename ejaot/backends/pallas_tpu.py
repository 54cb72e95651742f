"""Pallas kernels lowered to Mosaic (TPUs); tpu_custom_call is export-stable."""
from . import BackendInfo

BACKEND = BackendInfo(name="pallas_tpu", platforms=("tpu",), rank=10)
