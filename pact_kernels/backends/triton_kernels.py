"""Triton kernels of the PACT objective (SPEC §3, §5) and of plain cross-entropy.

One program per row of the logits. Each program sweeps its row of ``z`` twice:

1. online max / log-sum-exp over V (and, for ``full_vocab``, over the
   reference row too), then gathers of the target and of the K safety columns;
   the K-value work (restricted softmaxes, sorted cumulative-mass dispersion,
   sigmoid gate, position decay, mixing, weighted KL) runs in registers;
2. the gradient sweep: ``(softmax(z) − onehot(y))/n`` (plus the full-vocab KL
   term for ``full_vocab``) written once in the gradient's dtype.

For the safety-set variants the sweep writes ``softmax(z)/n`` only; the
target column and the K safety columns then get their float32 totals
(``softmax − 1`` at the target, ``+ λ·T·(p_ft − p_ref)`` on S, times ``1/n``)
stored after it, behind a barrier: the sweep's value there is overwritten,
never read back, so each stored value is rounded to the output dtype exactly
once, and the sweep's inner loop stays load, exp, store.

Every load is cast to float32 at once (accumulation in float32; the CPU
interpreter also mis-computes bf16 arithmetic). Row offsets are 64-bit.
Rows whose label is ``ignore_index`` get a zero gradient row and zero outputs
without reading ``z``.

Importing this module needs triton but no GPU (``TRITON_INTERPRET=1`` runs
the kernels on the CPU).
"""
from __future__ import annotations

import triton
import triton.language as tl

# pact_kernels.formulas.DISPERSION_TIE_TOLERANCE (the dispersion's tie rule), as a compile-time constant.
DISPERSION_TIE_TOLERANCE = tl.constexpr(1e-6)


@triton.jit
def _online_lse_update(m, d, x):
    """Fold the float32 block ``x`` (masked entries −inf) into the running max ``m`` and sum ``d``."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    # An all −inf prefix keeps m = −inf; shift by 0 then so that exp never sees −inf − (−inf).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
    return m_new, d


@triton.jit
def _write_zero_row(g_row, stride_g_col, V, BLOCK_V: tl.constexpr):
    """Zero the gradient row of an unlabelled row (``g_row`` points at its first element)."""
    zeros = tl.zeros([BLOCK_V], dtype=g_row.dtype.element_ty)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        tl.store(g_row + cols * stride_g_col, zeros, mask=cols < V)


@triton.jit
def _write_ignored_row(row, g_row, stride_g_col, ce_ptr, kl_ptr, gate_ptr, V, BLOCK_V: tl.constexpr):
    """An unlabelled row of a PACT kernel: a zero gradient row and zero ``ce``, ``kl``, ``gate`` at ``row``."""
    _write_zero_row(g_row, stride_g_col, V, BLOCK_V)
    tl.store(ce_ptr + row, 0.0)
    tl.store(kl_ptr + row, 0.0)
    tl.store(gate_ptr + row, 0.0)


@triton.jit
def _dispersion(x, kmask, mass_threshold, K):
    """``I(softmax(x))`` over the K valid lanes of ``x`` ([K_PAD] float32, already divided by T_g).

    ``min{k : sum of the k largest q ≥ τ_mass − 1e-6} / K`` (the tie rule,
    ``DISPERSION_TIE_TOLERANCE``), capped at ``K/K``.
    """
    x = tl.where(kmask, x, float("-inf"))
    e = tl.exp(x - tl.max(x, axis=0))
    q = e / tl.sum(e, axis=0)
    # float64 sums (the tie rule, pact_kernels.formulas): a float32 scan errs by ~1e-5 at K = 1000
    cumulative = tl.cumsum(tl.sort(q, descending=True).to(tl.float64), axis=0)
    count = tl.sum((cumulative < mass_threshold - DISPERSION_TIE_TOLERANCE).to(tl.int32), axis=0) + 1
    count = tl.minimum(count, K)
    return count.to(tl.float32) / K


@triton.jit
def _load_ref_on_s(r_row, stride_r_col, ids, kk, kmask, GATHER: tl.constexpr):
    """Reference logits on S as float32 [K_PAD]: gathered by ``ids`` from a [V] row, or read from a [K] row."""
    if GATHER:
        r = tl.load(r_row + ids * stride_r_col, mask=kmask, other=0.0)
    else:
        r = tl.load(r_row + kk * stride_r_col, mask=kmask, other=0.0)
    return r.to(tl.float32)


@triton.jit
def _row_lse(z_row, stride_z_col, V, BLOCK_V: tl.constexpr):
    """Sweep 1 of a one-stream row: log-sum-exp of the float32-cast ``z`` row over V."""
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        # evict_last: sweep 2 reads the row again, from L2 if it is still there.
        x = tl.load(z_row + cols * stride_z_col, mask=cols < V, other=float("-inf"),
                    eviction_policy="evict_last").to(tl.float32)
        m, d = _online_lse_update(m, d, x)
    return m + tl.log(d)


@triton.jit
def _write_softmax_row(z_row, stride_z_col, g_row, stride_g_col, lse, inv_n, V, BLOCK_V: tl.constexpr):
    """Sweep 2 of a one-stream row: ``g = softmax(z)·inv_n`` over V, in g's dtype.

    Nothing but load, exp, store, from the row's end back: the blocks sweep 1
    read last are the likeliest still in L2, and this last read of z and the
    gradient's write are marked to leave L2 first. ``g_row`` may alias ``z_row``.
    """
    num_blocks = tl.cdiv(V, BLOCK_V)
    for step in range(0, num_blocks):
        cols = (num_blocks - 1 - step) * BLOCK_V + tl.arange(0, BLOCK_V)
        cmask = cols < V
        x = tl.load(z_row + cols * stride_z_col, mask=cmask, other=float("-inf"),
                    eviction_policy="evict_first").to(tl.float32)
        g = (tl.exp(x - lse) * inv_n).to(g_row.dtype.element_ty)
        tl.store(g_row + cols * stride_g_col, g, mask=cmask, eviction_policy="evict_first")


@triton.jit
def _gate(z_s, r_post, kmask, t, K, mass_threshold, gate_scale, gate_bias, gate_temperature, decay_start, decay_tau,
          USE_DECAY: tl.constexpr):
    """``c̃ = sigmoid(α·(I(q_ft) − I(q_post) − β))``, times ``exp(−(t − N)/τ)`` past N when ``USE_DECAY``.

    ``z_s``, ``r_post``: [K_PAD] float32 logits on S; ``t``: the row's answer position (float32).
    """
    i_ft = _dispersion(z_s / gate_temperature, kmask, mass_threshold, K)
    i_post = _dispersion(r_post / gate_temperature, kmask, mass_threshold, K)
    gate = tl.sigmoid(gate_scale * (i_ft - i_post - gate_bias))
    if USE_DECAY:
        gate = gate * tl.exp(-tl.maximum(t - decay_start, 0.0) / decay_tau)
    return gate


@triton.jit
def _weighted_kl(z_s, mixed, w, kmask, kl_temperature):
    """``(KL_row, p_ft, p_ref)`` on S: ``p_ref ∝ w·exp(m/T)`` over w > 0, ``p_ft = softmax(z_s/T)``.

    ``KL_row = T²·Σ_{w>0} p_ref·(log p_ref − log p_ft)``; tokens with w = 0 get
    p_ref = 0 and add nothing. All arguments [K_PAD] float32 (``z_s`` −inf on padding).
    """
    positive = (w > 0) & kmask
    log_un = tl.where(positive, tl.log(tl.where(positive, w, 1.0)) + mixed / kl_temperature, float("-inf"))
    log_un_max = tl.max(log_un, axis=0)
    e_ref = tl.exp(log_un - log_un_max)
    sum_ref = tl.sum(e_ref, axis=0)
    p_ref = e_ref / sum_ref
    log_p_ref = log_un - log_un_max - tl.log(sum_ref)
    z_t = z_s / kl_temperature
    z_t_max = tl.max(z_t, axis=0)
    e_ft = tl.exp(z_t - z_t_max)
    sum_ft = tl.sum(e_ft, axis=0)
    p_ft = e_ft / sum_ft
    log_p_ft = z_t - z_t_max - tl.log(sum_ft)
    terms = tl.where(positive, p_ref * (log_p_ref - log_p_ft), 0.0)
    return kl_temperature * kl_temperature * tl.sum(terms, axis=0), p_ft, p_ref


@triton.jit
def pact_safety_set_kernel(
    z_ptr, stride_z_row, stride_z_col,
    g_ptr, stride_g_row, stride_g_col,
    labels_ptr, ids_ptr, w_ptr,
    rf_ptr, stride_rf_row, stride_rf_col,
    rp_ptr, stride_rp_row, stride_rp_col,
    pos_ptr, inv_n_ptr,
    ce_ptr, kl_ptr, gate_ptr,
    V, K, ignore_index,
    lambda_kl, mass_threshold, gate_scale, gate_bias, gate_temperature,
    decay_start, decay_tau, kl_temperature,
    RF_GATHER: tl.constexpr, RP_GATHER: tl.constexpr,
    USE_GATE: tl.constexpr, USE_DECAY: tl.constexpr,
    BLOCK_V: tl.constexpr, K_PAD: tl.constexpr,
):
    """CE over V + weighted KL on S, and the gradient, for one row (program id = row).

    Pointers: ``z [rows, V]``, ``g [rows, V]`` (may alias z), ``labels [rows]``
    int64, ``ids [K]`` int64, ``w [K]`` float32 (ones for ``safety_tokens``),
    ``rf``/``rp`` ``[rows, K]`` or ``[rows, V]`` (``*_GATHER``), ``pos [rows]``
    int64, ``inv_n [1]`` float32; outputs ``ce``, ``kl``, ``gate`` ``[rows]`` float32.
    """
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z_row
    g_row = g_ptr + row * stride_g_row
    y = tl.load(labels_ptr + row)
    if y == ignore_index:
        _write_ignored_row(row, g_row, stride_g_col, ce_ptr, kl_ptr, gate_ptr, V, BLOCK_V)
    else:
        lse = _row_lse(z_row, stride_z_col, V, BLOCK_V)  # sweep 1
        z_y = tl.load(z_row + y * stride_z_col).to(tl.float32)

        # Gathers of S, then the K-value work in registers.
        kk = tl.arange(0, K_PAD)
        kmask = kk < K
        ids = tl.load(ids_ptr + kk, mask=kmask, other=0)
        z_s = tl.load(z_row + ids * stride_z_col, mask=kmask, other=float("-inf")).to(tl.float32)
        z_s = tl.where(kmask, z_s, float("-inf"))
        w = tl.load(w_ptr + kk, mask=kmask, other=0.0).to(tl.float32)
        r_full = _load_ref_on_s(rf_ptr + row * stride_rf_row, stride_rf_col, ids, kk, kmask, RF_GATHER)
        if USE_GATE:
            r_post = _load_ref_on_s(rp_ptr + row * stride_rp_row, stride_rp_col, ids, kk, kmask, RP_GATHER)
            t = 0.0
            if USE_DECAY:
                t = tl.load(pos_ptr + row).to(tl.float32)
            gate = _gate(z_s, r_post, kmask, t, K, mass_threshold, gate_scale, gate_bias, gate_temperature,
                         decay_start, decay_tau, USE_DECAY)
            mixed = (1.0 - gate) * r_full + gate * r_post
        else:
            gate = 0.0
            mixed = r_full
        kl_row, p_ft, p_ref = _weighted_kl(z_s, mixed, w, kmask, kl_temperature)

        inv_n = tl.load(inv_n_ptr)
        is_target = ids == y
        g_s = (tl.exp(z_s - lse) - is_target.to(tl.float32) + lambda_kl * kl_temperature * (p_ft - p_ref)) * inv_n
        g_y = (tl.exp(z_y - lse) - 1.0) * inv_n
        y_outside_s = tl.sum((is_target & kmask).to(tl.int32), axis=0) == 0
        tl.store(ce_ptr + row, lse - z_y)
        tl.store(kl_ptr + row, kl_row)
        tl.store(gate_ptr + row, gate)

        # Sweep 2 (with inplace_grad, g aliases z: every value above was read before this point).
        tl.debug_barrier()
        _write_softmax_row(z_row, stride_z_col, g_row, stride_g_col, lse, inv_n, V, BLOCK_V)
        # The target and S columns: their float32 totals overwrite the sweep's values
        # (the target's here only when it lies outside S; else g_s carries its −1).
        tl.debug_barrier()
        tl.store(g_row + y * stride_g_col, g_y.to(g_row.dtype.element_ty), mask=y_outside_s)
        tl.store(g_row + ids * stride_g_col, g_s.to(g_row.dtype.element_ty), mask=kmask)


@triton.jit
def pact_full_vocab_kernel(
    z_ptr, stride_z_row, stride_z_col,
    g_ptr, stride_g_row, stride_g_col,
    r_ptr, stride_r_row, stride_r_col,
    labels_ptr, inv_n_ptr,
    ce_ptr, kl_ptr, gate_ptr,
    V, ignore_index, lambda_kl, kl_temperature,
    UNIT_TEMPERATURE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """CE + full-vocabulary KL (``full_vocab`` variant) and the gradient, for one row.

    Two streams over V: ``z [rows, V]`` and the reference ``r [rows, V]``. The
    first sweep keeps running (max, sum) pairs for ``z``, ``z/T`` and ``r/T``
    and the running ``Σ exp(r/T − max)·(r/T − z/T)``, so
    ``KL = T²·(A/d_r − lse(r/T) + lse(z/T))`` with no probability stored.
    The second writes ``((softmax(z) − onehot(y)) + λT·(softmax(z/T) − softmax(r/T)))/n``.
    ``UNIT_TEMPERATURE`` (T == 1) reuses ``lse(z)`` for ``lse(z/T)``.
    """
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z_row
    r_row = r_ptr + row * stride_r_row
    g_row = g_ptr + row * stride_g_row
    y = tl.load(labels_ptr + row)
    if y == ignore_index:
        _write_ignored_row(row, g_row, stride_g_col, ce_ptr, kl_ptr, gate_ptr, V, BLOCK_V)
    else:
        m_z = float("-inf")
        d_z = 0.0
        m_zt = float("-inf")
        d_zt = 0.0
        m_r = float("-inf")
        d_r = 0.0
        a_r = 0.0
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            cmask = cols < V
            x = tl.load(z_row + cols * stride_z_col, mask=cmask, other=float("-inf"),
                        eviction_policy="evict_last").to(tl.float32)
            r_t = tl.load(r_row + cols * stride_r_col, mask=cmask, other=float("-inf"),
                          eviction_policy="evict_last").to(tl.float32) / kl_temperature
            m_z, d_z = _online_lse_update(m_z, d_z, x)
            if UNIT_TEMPERATURE:
                x_t = x
            else:
                x_t = x / kl_temperature
                m_zt, d_zt = _online_lse_update(m_zt, d_zt, x_t)
            # Running Σ exp(r/T − m_r)·(r/T − z/T); r = −inf adds nothing (0·log 0 = 0).
            m_r_new = tl.maximum(m_r, tl.max(r_t, axis=0))
            m_r_safe = tl.where(m_r_new == float("-inf"), 0.0, m_r_new)
            rescale = tl.exp(m_r - m_r_safe)
            e_r = tl.exp(r_t - m_r_safe)
            live = r_t > float("-inf")
            a_r = a_r * rescale + tl.sum(tl.where(live, e_r * (r_t - x_t), 0.0), axis=0)
            d_r = d_r * rescale + tl.sum(e_r, axis=0)
            m_r = m_r_new
        lse = m_z + tl.log(d_z)
        if UNIT_TEMPERATURE:
            lse_t = lse
        else:
            lse_t = m_zt + tl.log(d_zt)
        lse_r = m_r + tl.log(d_r)
        kl_row = kl_temperature * kl_temperature * (a_r / d_r - lse_r + lse_t)
        z_y = tl.load(z_row + y * stride_z_col).to(tl.float32)
        inv_n = tl.load(inv_n_ptr)
        tl.store(ce_ptr + row, lse - z_y)
        tl.store(kl_ptr + row, kl_row)
        tl.store(gate_ptr + row, 0.0)

        # Sweep 2, from the row's end back (as in pact_safety_set_kernel).
        y32 = y.to(tl.int32)  # a 32-bit compare per element (V < 2**31)
        kl_scale = lambda_kl * kl_temperature
        num_blocks = tl.cdiv(V, BLOCK_V)
        tl.debug_barrier()
        for step in range(0, num_blocks):
            cols = (num_blocks - 1 - step) * BLOCK_V + tl.arange(0, BLOCK_V)
            cmask = cols < V
            x = tl.load(z_row + cols * stride_z_col, mask=cmask, other=float("-inf"),
                        eviction_policy="evict_first").to(tl.float32)
            r_t = tl.load(r_row + cols * stride_r_col, mask=cmask, other=float("-inf"),
                          eviction_policy="evict_first").to(tl.float32) / kl_temperature
            p = tl.exp(x - lse)
            if UNIT_TEMPERATURE:
                p_t = p
            else:
                p_t = tl.exp(x / kl_temperature - lse_t)
            g = p - (cols == y32).to(tl.float32) + kl_scale * (p_t - tl.exp(r_t - lse_r))
            tl.store(g_row + cols * stride_g_col, (g * inv_n).to(g_row.dtype.element_ty), mask=cmask,
                     eviction_policy="evict_first")


@triton.jit
def cross_entropy_kernel(
    z_ptr, stride_z_row, stride_z_col,
    g_ptr, stride_g_row, stride_g_col,
    labels_ptr, inv_n_ptr, ce_ptr,
    V, ignore_index,
    BLOCK_V: tl.constexpr,
):
    """Plain CE over V and its gradient ``(softmax(z) − onehot(y))/n``, for one row (program id = row).

    Pointers: ``z [rows, V]``, ``g [rows, V]`` (may alias z), ``labels [rows]``
    int64, ``inv_n [1]`` float32; output ``ce [rows]`` float32. The two sweeps
    of :func:`pact_safety_set_kernel` without S: the target column gets its
    float32 total after the softmax sweep.
    """
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z_row
    g_row = g_ptr + row * stride_g_row
    y = tl.load(labels_ptr + row)
    if y == ignore_index:
        _write_zero_row(g_row, stride_g_col, V, BLOCK_V)
        tl.store(ce_ptr + row, 0.0)
    else:
        lse = _row_lse(z_row, stride_z_col, V, BLOCK_V)  # sweep 1
        z_y = tl.load(z_row + y * stride_z_col).to(tl.float32)
        inv_n = tl.load(inv_n_ptr)
        tl.store(ce_ptr + row, lse - z_y)
        tl.debug_barrier()
        _write_softmax_row(z_row, stride_z_col, g_row, stride_g_col, lse, inv_n, V, BLOCK_V)  # sweep 2
        tl.debug_barrier()
        g_y = (tl.exp(z_y - lse) - 1.0) * inv_n
        tl.store(g_row + y * stride_g_col, g_y.to(g_row.dtype.element_ty))
