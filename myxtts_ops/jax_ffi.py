"""The fused kernels from JAX, through the XLA typed-FFI handlers the TF op
lowers to under ``jit_compile=True``.

JAX uses the same XLA FFI as TensorFlow's XLA: the pybind11 module exports the
handlers as PyCapsules (``kernels.ffi_targets()``); :func:`register` hands them
to JAX and :func:`forward` / :func:`backward` call them with
``jax.ffi.ffi_call`` (inside ``jax.jit`` or not), following the custom-call
contract of ``csrc/xla/mel_loss_ffi.cc``. Needs no TensorFlow. The tests run
the Host handler this way on the CPU and the CUDA handler on a GPU
(``tests/gpu``), and the GPU benchmark times it beside the pybind11 launches.

JAX must run with 64-bit types (the state, the counts and the per-sample
weights are 64-bit): :func:`jax_module` turns ``jax_enable_x64`` on.
"""

import numpy as np

from myxtts_ops import kernels

# Named in csrc/xla/mel_loss_ffi.h; absent from a build without the XLA FFI.
FORWARD_TARGET = getattr(kernels, "FFI_FORWARD_TARGET", None)
BACKWARD_TARGET = getattr(kernels, "FFI_BACKWARD_TARGET", None)
CHECK_LENGTHS_TARGET = getattr(kernels, "FFI_CHECK_LENGTHS_TARGET", None)
#: kernels.ffi_targets() platform name -> JAX platform name.
JAX_PLATFORMS = {"cpu": "cpu", "CUDA": "CUDA"}
_registered = set()


def jax_module():
    """jax with 64-bit types on (the state, counts and weights are 64-bit)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def register(platform):
    """Registers the handlers of ``platform`` ("cpu" or "CUDA", the keys of
    ``kernels.ffi_targets()``) with JAX; a second call does nothing."""
    jax = jax_module()
    if platform in _registered:
        return
    if not hasattr(kernels, "ffi_targets"):
        raise RuntimeError(
            "this build of myxtts-ops has no XLA FFI handlers: when it was built, neither "
            "TensorFlow's include tree (2.21 has xla/ffi/api/ffi.h) nor jaxlib's was found; "
            "rebuild it with TensorFlow 2.21 or JAX importable (pip install --no-build-isolation)"
        )
    available = kernels.ffi_targets()
    if platform not in available:
        raise RuntimeError(
            f"no {platform!r} FFI handlers in this build (it has {sorted(available)}); "
            "the 'CUDA' handlers need a build with CUDA (MYXTTS_OPS_CUDA=on)"
        )
    for name, capsule in available[platform].items():
        jax.ffi.register_ffi_target(name, capsule, platform=JAX_PLATFORMS[platform])
    _registered.add(platform)


def _out_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _workspace_bytes(shape):
    return int(kernels.cuda_workspace_size(*shape)) if len(shape) == 3 else 0


def forward(
    y_true,
    y_pred,
    lengths=None,
    state=None,
    *,
    loss_type="l1",
    normalization="per_sample",
    huber_delta=1.0,
):
    """(loss, per_sample, nonfinite_count, new_state, sample_weights, active_count,
    valid_count), as jax arrays."""
    jax = jax_module()
    import jax.numpy as jnp

    batch = y_true.shape[0]
    out = _out_dtype(y_true.dtype)
    use_lengths = lengths is not None
    if not use_lengths:
        lengths = jnp.zeros([0], jnp.int32)
    if state is None:
        state = jnp.zeros([kernels.STATE_SIZE], jnp.float64)
    call = jax.ffi.ffi_call(
        FORWARD_TARGET,
        (
            jax.ShapeDtypeStruct((), out),
            jax.ShapeDtypeStruct((batch,), out),
            jax.ShapeDtypeStruct((), np.int64),
            jax.ShapeDtypeStruct((kernels.STATE_SIZE,), np.float64),
            jax.ShapeDtypeStruct((2, batch), np.float64),
            jax.ShapeDtypeStruct((), np.int64),
            jax.ShapeDtypeStruct((), np.int64),
            # The CUDA handler's workspace (the Host handler does not read it;
            # a shape that is not [B, T, M] is refused by the handler itself).
            jax.ShapeDtypeStruct((_workspace_bytes(y_true.shape),), np.uint8),
        ),
    )
    return call(
        y_true,
        y_pred,
        lengths,
        state,
        loss_type=loss_type,
        normalization=normalization,
        use_lengths=use_lengths,
        huber_delta=np.float64(huber_delta),
    )[:7]


def backward(
    y_true,
    y_pred,
    lengths,
    sample_weights,
    grad_loss,
    grad_per_sample,
    *,
    loss_type="l1",
    huber_delta=1.0,
    want_grad_y_true=True,
):
    """(grad_y_true, grad_y_pred); grad_y_true is empty unless want_grad_y_true.

    ``lengths`` go through :func:`check_lengths` first: the CUDA handler takes
    them as the forward checked them (it clamps, for memory safety, and
    refuses nothing), so a direct call with an out-of-range length is refused
    here, as on the host, instead of giving the gradient of other lengths."""
    jax = jax_module()
    import jax.numpy as jnp

    use_lengths = lengths is not None
    if use_lengths:
        frames = y_true.shape[1] if len(y_true.shape) == 3 else np.iinfo(np.int32).max
        lengths = check_lengths(lengths, "lengths", frames)
    else:
        lengths = jnp.zeros([0], jnp.int32)
    true_shape = y_true.shape if want_grad_y_true else (0,)
    call = jax.ffi.ffi_call(
        BACKWARD_TARGET,
        (
            jax.ShapeDtypeStruct(true_shape, y_true.dtype),
            jax.ShapeDtypeStruct(y_pred.shape, y_pred.dtype),
        ),
    )
    return call(
        y_true,
        y_pred,
        lengths,
        sample_weights,
        grad_loss,
        grad_per_sample,
        loss_type=loss_type,
        use_lengths=use_lengths,
        huber_delta=np.float64(huber_delta),
        want_grad_y_true=want_grad_y_true,
    )


def check_lengths(lengths, input_name, limit, note=""):
    """``lengths`` ([B], any integer or float dtype) as int32, or the handler's
    error for an entry that is not a whole number in ``[0, limit]`` (the check
    ``myxtts_loss.terms.as_lengths`` runs on every length under XLA). As the
    TF op's XLA kernel does, int32 and int64 go in as they are (an int32
    result aliases its operand) and floats as float64."""
    jax = jax_module()
    jnp = jax.numpy
    lengths = jnp.asarray(lengths)
    # How the handler writes a bad float value: as the float32 it was, or as float64.
    value_bits = 32 if lengths.dtype in (jnp.float16, jnp.bfloat16, jnp.float32) else 64
    if lengths.dtype not in (jnp.int32, jnp.int64):
        lengths = lengths.astype(jnp.float64)
    call = jax.ffi.ffi_call(
        CHECK_LENGTHS_TARGET,
        jax.ShapeDtypeStruct(lengths.shape, jnp.int32),
        input_output_aliases={0: 0} if lengths.dtype == jnp.int32 else None,
        # A check, kept even where nothing reads its result (as TF's lowering).
        has_side_effect=True,
    )
    return call(
        lengths,
        input_name=input_name,
        note=note,
        limit=np.int64(limit),
        value_bits=np.int64(value_bits),
    )
