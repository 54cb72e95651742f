"""The ejaot kernel collection, imported as `ejaot_kernels`.

One folder per kernel: `__init__.py` declares its SPEC (plain data, no jax import),
`xla.py` / `triton_gpu.py` / `pallas_tpu.py` hold its implementations per backend, and
`tuned/<target>.json` its tuned configs. Changing a kernel touches only its folder.
"""
