"""Compiling Gluon kernels with Triton's own Gluon pipeline under jax-triton: a compile hook
that the Triton backends install, and route their Gluon kernels through, by calling
`install_compile_hook` / `route_through_gluon_pipeline` before they lower a kernel that
needs it (importing this module changes nothing).

jax-triton 0.4.1 runs every module, Gluon ones included, through Triton's TTIR -> TTGIR
passes. A Gluon module is TTGIR already, with explicit layouts, and those passes are not
meant for it. For mla_attention's single-role Hopper kernel they happen to help (measured
on an H100: its logits loop ran 2774 cycles per block under Triton's Gluon pipeline, 2069
under jax-triton's), so it keeps jax-triton's pipeline. The warp-specialized MLA kernel
cannot: the passes add layout conversions whose shared-memory scratch the allocator cannot
overlap across concurrently running partitions (262,732 bytes, over the 232,448 a block may
use; 230,156 under the Gluon pipeline). flash_attention's ping-pong forward cannot either:
the passes wait for each Q K^T product as soon as it is issued. Triton compiles Gluon with
`gluon_to_ttgir`; the kernels routed here go there, and are launched with all their warps.

Every kernel compiled through the hook also gets its host-side TMA descriptors' metadata
completed: jax-triton 0.4.1 requires an `is_im2col` key in each entry that Triton 3.7.1
does not write (its own launcher reads it with a default of False, as jax-triton does
where it uses it). Both calls are idempotent; no-ops without jax-triton."""
from __future__ import annotations

# Entry-function names of the kernels routed through the Gluon pipeline (each backend
# adds its own: route_through_gluon_pipeline)
_ROUTED: set[str] = set()
# A routed kernel's total warp count (its worker partitions' included), by compiled name
_TOTAL_WARPS: dict[str, int] = {}


def route_through_gluon_pipeline(*kernels) -> None:
    """Compile these Gluon kernels (JIT functions, or their names) with Triton's Gluon
    pipeline and launch them with all their warps; installs the hook. Call before lowering
    them."""
    _ROUTED.update(k if isinstance(k, str) else k.__name__ for k in kernels)
    install_compile_hook()


def install_compile_hook() -> None:
    """Installs the compile hook in jax-triton (once per process): every kernel's TMA
    descriptor metadata completed, routed kernels compiled as Gluon."""
    try:
        import jax_triton.triton_lib as lib
    except ImportError:  # pragma: no cover - hosts without jax-triton never lower
        return
    compile_ptx = lib.compile_ttir_to_ptx_inplace
    if getattr(compile_ptx, "ejaot_gluon_pipeline", False):
        return

    def compile_ptx_routed(module, backend, options, capability):
        name = module.get_entry_func_name()
        if name not in _ROUTED:
            return compile_ptx(module, _DescMetaCompleted(backend), options, capability)
        result = compile_ptx(module, _GluonStages(backend), options, capability)
        # a warp-specialized kernel runs more warps than it was launched with: its worker
        # partitions'. Triton's launcher reads the total from the compiled module;
        # jax-triton launches num_warps, which the kernel's .reqntid then rejects
        total = module.get_int_attr("ttg.total-num-warps")
        if total is not None:
            _TOTAL_WARPS[result.name] = total
        return result

    compile_ptx_routed.ejaot_gluon_pipeline = True
    lib.compile_ttir_to_ptx_inplace = compile_ptx_routed
    lib.triton_kernel_call_lib = _LaunchWithTotalWarps(lib.triton_kernel_call_lib)


class _LaunchWithTotalWarps:
    """jaxlib's Triton kernel-call module, except that a kernel compiled above gets its
    total warp count as the launch's (TritonKernel(name, num_warps, ...))."""

    def __init__(self, module):
        self._module = module

    def TritonKernel(self, name, num_warps, *rest):  # noqa: N802 - jaxlib's name
        return self._module.TritonKernel(name, _TOTAL_WARPS.get(name, num_warps), *rest)

    def __getattr__(self, name):
        return getattr(self._module, name)


class _DescMetaCompleted:
    """A view of a Triton CUDA backend whose PTX stage first completes the TMA descriptor
    metadata (no im2col descriptors here). Everything else is the backend's own."""

    def __init__(self, backend):
        self._backend = backend

    def make_ptx(self, src, metadata, options, capability):
        for meta in metadata.get("tensordesc_meta") or ():
            meta.setdefault("is_im2col", False)
        return self._backend.make_ptx(src, metadata, options, capability)

    def __getattr__(self, name):
        return getattr(self._backend, name)


class _GluonStages(_DescMetaCompleted):
    """A view of a Triton CUDA backend whose TTIR -> TTGIR stages are Gluon's: no TTIR
    passes, then `gluon_to_ttgir`. Everything after TTGIR is the backend's own."""

    def make_ttir(self, module, metadata, options, capability):
        return module

    def make_ttgir(self, module, metadata, options, capability):
        return self._backend.gluon_to_ttgir(module, metadata, options, capability)
