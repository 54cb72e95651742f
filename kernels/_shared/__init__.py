"""Code that several kernels of the collection share, imported as `ejaot_kernels._shared`.

A kernel folder holds what only that kernel uses; what two or more kernels use lives here,
one module per concern, each with one owner:

  statics.py          static-argument normalizers of the kernels' specs (no jax import)
  mla_projections.py  the absorbed MLA form's two XLA projections (q -> q_lat, out_lat -> out)
  mla_triton.py       the Triton/Gluon MLA decode library (mla_attention's and
                      paged_mla_attention's Triton backends)
  gluon_support.py    Gluon helpers the Hopper kernels share
  gluon_pipeline.py   the jax-triton compile hook Gluon kernels register with

A backend's source hash covers each of these modules it imports (ejaot.spec.sources
follows `ejaot_kernels._shared.*` imports, and this __init__), and nothing else here.
"""
