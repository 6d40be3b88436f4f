"""The compiled kernels (numba). Imported only through ``scratchcnn.engine.modes.active()``.

Each function is a plain loop nest over C-contiguous arrays laid out as the layers keep
their activations in memory: (A, C, B) for per-channel work (C the channel axis, A and B
everything before and after it), (P, H, Q, W, R) for pooling (H and W the spatial axes).
Every kernel releases the GIL (``nogil``), so the threads of a split batch run them side by
side. Sums accumulate in float64 per channel, in a fixed order: the same input gives the
same bits every time. ``reassoc`` lets LLVM vectorise those sums (it changes only the
order of additions, not which values are added).

A rule for writing them: inside an inner loop, index an array by the bare loop variable
(take a slice first: ``row = a[i, k0 : k0 + n]``, then ``row[j]``). An index with an offset
(``a[j + k]``) goes through numba's negative-index test on every access, and LLVM then does
not vectorise the loop: 5-10x slower, measured on Winograd transforms (BENCHMARKS.md).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_LOOP = {"nogil": True, "cache": True, "boundscheck": False}
_SUM = {**_LOOP, "fastmath": {"reassoc"}}


# --- BatchNorm: sums over (A, B) per channel, and the two element-wise passes -------------
@nb.njit(**_SUM)
def channel_sum(x):
    """s[c] = sum_{a,b} x[a,c,b], in float64."""
    na, nc, nb_ = x.shape
    out = np.zeros(nc, np.float64)
    for a in range(na):
        for c in range(nc):
            s = 0.0
            for b in range(nb_):
                s += np.float64(x[a, c, b])
            out[c] += s
    return out


@nb.njit(**_LOOP)
def channel_add(x, b):
    """x[a, c, :] += b[c] in place: Conv2D's bias (3x NumPy's broadcast add at 32x256 rows)."""
    na, nc, nb_ = x.shape
    for a in range(na):
        for c in range(nc):
            v = b[c]
            row = x[a, c]
            for k in range(nb_):
                row[k] += v


@nb.njit(**_SUM)
def channel_sqdev(x, mean):
    """s[c] = sum_{a,b} (x[a,c,b] - mean[c])^2, the difference in x's dtype."""
    na, nc, nb_ = x.shape
    out = np.zeros(nc, np.float64)
    for a in range(na):
        for c in range(nc):
            m = mean[c]
            s = 0.0
            for b in range(nb_):
                d = np.float64(x[a, c, b] - m)
                s += d * d
            out[c] += s
    return out


@nb.njit(**_LOOP)
def channel_affine(x, mean, scale, bias, out):
    """out = (x - mean[c]) * scale[c] + bias[c]."""
    na, nc, nb_ = x.shape
    for a in range(na):
        for c in range(nc):
            m, s, t = mean[c], scale[c], bias[c]
            for b in range(nb_):
                out[a, c, b] = (x[a, c, b] - m) * s + t


@nb.njit(**_SUM)
def channel_grad_sums(dy, x, mean):
    """(sum dy, sum dy * (x - mean)) per channel, in float64: one pass over dy and x."""
    na, nc, nb_ = x.shape
    out = np.zeros((2, nc), np.float64)
    for a in range(na):
        for c in range(nc):
            m = mean[c]
            s0 = 0.0
            s1 = 0.0
            for b in range(nb_):
                g = np.float64(dy[a, c, b])
                s0 += g
                s1 += g * np.float64(x[a, c, b] - m)
            out[0, c] += s0
            out[1, c] += s1
    return out


@nb.njit(**_LOOP)
def channel_grad_input(dy, x, mean, a_, k1, k2, out):
    """out = a[c] * dy - k1[c] * (x - mean[c]) - k2[c] (BatchNorm's dL/dx in training)."""
    na, nc, nb_ = x.shape
    for a in range(na):
        for c in range(nc):
            m, s, u, v = mean[c], a_[c], k1[c], k2[c]
            for b in range(nb_):
                out[a, c, b] = s * dy[a, c, b] - u * (x[a, c, b] - m) - v


# --- SGD with momentum, in place over flat memory -----------------------------------------
@nb.njit(**_LOOP)
def sgd_momentum(p, g, buf, lr, mu):
    """buf = mu * buf + g;  p -= lr * buf. The same float operations, in the same order, as
    the NumPy update (no fused multiply-add), so the same bits in one pass instead of
    three."""
    for i in range(p.size):
        b = buf[i] * mu + g[i]
        buf[i] = b
        p[i] -= lr * b


# --- ReLU over flat memory ------------------------------------------------------------------
@nb.njit(**_LOOP)
def relu(x, out):
    """out = max(x, 0), NaN kept (as np.maximum and torch do)."""
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        out[i] = v if (v > zero or v != v) else zero


@nb.njit(**_LOOP)
def relu_grad(dy, y, out):
    """out = dy where y > 0, else 0."""
    zero = dy.dtype.type(0)
    for i in range(y.size):
        out[i] = dy[i] if y[i] > 0 else zero


# --- the other activations over flat memory (their routes: engine.activations) ------------
# NaN stays NaN forward and backward, as in the layers: every clamp is written as two
# comparisons (a NaN fails both), never as min/max.
@nb.njit(**_LOOP)
def silu_grad(dy, x, out):
    """out = dy * s * (1 + x * (1 - s)), s = sigmoid(x)."""
    one = x.dtype.type(1)
    for i in range(x.size):
        v = x[i]
        s = one / (one + np.exp(-v))
        out[i] = dy[i] * s * (one + v * (one - s))


@nb.njit(**_LOOP)
def gelu(x, out):
    """out = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, in float64."""
    for i in range(x.size):
        v = np.float64(x[i])
        out[i] = v * (0.5 * (1.0 + math.erf(v * 0.7071067811865476)))


@nb.njit(**_LOOP)
def gelu_grad(dy, x, out):
    """out = dy * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi), in float64."""
    for i in range(x.size):
        v = np.float64(x[i])
        cdf = 0.5 * (1.0 + math.erf(v * 0.7071067811865476))
        out[i] = dy[i] * (cdf + v * math.exp(-0.5 * v * v) * 0.3989422804014327)


@nb.njit(**_LOOP)
def gelu_tanh(x, out):
    """out = x / 2 * (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), in float64."""
    for i in range(x.size):
        v = np.float64(x[i])
        t = math.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))
        out[i] = 0.5 * v * (1.0 + t)


@nb.njit(**_LOOP)
def gelu_tanh_grad(dy, x, out):
    """out = dy * ((1 + t) / 2 + x / 2 * (1 - t^2) * sqrt(2 / pi) (1 + 3 * 0.044715 x^2))."""
    for i in range(x.size):
        v = np.float64(x[i])
        t = math.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))
        du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v)
        out[i] = dy[i] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du)


@nb.njit(**_LOOP)
def hardswish(x, out):
    """out = x * min(max(x + 3, 0), 6) / 6."""
    zero, three, six = x.dtype.type(0), x.dtype.type(3), x.dtype.type(6)
    for i in range(x.size):
        v = x[i]
        c = v + three
        if c < zero:
            c = zero
        if c > six:
            c = six
        out[i] = v * (c / six)


@nb.njit(**_LOOP)
def hardswish_grad(dy, x, out):
    """out = dy * (0 for x <= -3, 1 for x >= 3, x / 3 + 1/2 between)."""
    zero, three, half = x.dtype.type(0), x.dtype.type(3), x.dtype.type(0.5)
    for i in range(x.size):
        v = x[i]
        if v <= -three:
            out[i] = dy[i] * zero
        elif v >= three:
            out[i] = dy[i]
        else:
            out[i] = dy[i] * (v / three + half)


@nb.njit(**_LOOP)
def hardsigmoid(x, alpha, beta, out):
    """out = min(max(alpha * x + beta, 0), 1)."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in range(x.size):
        t = x[i] * alpha + beta
        if t < zero:
            t = zero
        if t > one:
            t = one
        out[i] = t


@nb.njit(**_LOOP)
def hardsigmoid_grad(dy, x, alpha, beta, out):
    """out = dy * alpha where 0 < alpha * x + beta < 1, else 0."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in range(x.size):
        t = x[i] * alpha + beta
        out[i] = dy[i] * alpha if (t > zero and t < one) else dy[i] * zero


@nb.njit(**_LOOP)
def clip(x, low, high, has_low, has_high, out):
    """out = x clamped to [low, high] (a bound only where has_low / has_high)."""
    for i in range(x.size):
        v = x[i]
        if has_low and v < low:
            v = low
        if has_high and v > high:
            v = high
        out[i] = v


@nb.njit(**_LOOP)
def clip_grad(dy, x, low, high, has_low, has_high, out):
    """out = dy where low < x < high (each test only for a bound that is there), else 0."""
    zero = dy.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        inside = (not has_low or v > low) and (not has_high or v < high)
        out[i] = dy[i] if inside else dy[i] * zero


# --- depthwise convolution in the (H, C, W, N) layout (engine.conv, batches) --------------
# xh is the padded input (Hp, C, Wp, N), C-contiguous; out / dy are (OH, C, OW, N); w is
# (C, KH, KW). A kernel tap (u, v) of channel c touches, for output row i, the stretch of
# input row i*SH + u that starts at column v: OW*N contiguous values at stride 1, OW runs
# of N at larger strides. Every inner loop runs over such a stretch.
@nb.njit(**_LOOP)
def depthwise_rows(xh, w, bias, sh, sw, out):
    """out[i, c, j, n] = bias[c] + sum_{u, v} w[c, u, v] * xh[i*SH + u, c, j*SW + v, n]."""
    oh, c, ow, n = out.shape
    kh, kw = w.shape[1], w.shape[2]
    m = ow * n
    for i in range(oh):
        for ch in range(c):
            row = out[i, ch].reshape(m)
            bv = bias[ch]
            for k in range(m):
                row[k] = bv
            for u in range(kh):
                xr = xh[i * sh + u, ch].reshape(-1)
                for v in range(kw):
                    wv = w[ch, u, v]
                    if sw == 1:
                        src = xr[v * n : v * n + m]
                        for k in range(m):
                            row[k] += wv * src[k]
                    else:
                        for j in range(ow):
                            src = xr[(j * sw + v) * n : (j * sw + v + 1) * n]
                            dst = row[j * n : (j + 1) * n]
                            for k in range(n):
                                dst[k] += wv * src[k]


@nb.njit(**_SUM)
def depthwise_rows_wgrad(xh, dy, sh, sw, gw):
    """gw[c, u, v] = sum_{i, j, n} dy[i, c, j, n] * xh[i*SH + u, c, j*SW + v, n], summed in
    float64 in a fixed order."""
    oh, c, ow, n = dy.shape
    kh, kw = gw.shape[1], gw.shape[2]
    m = ow * n
    for ch in range(c):
        for u in range(kh):
            for v in range(kw):
                total = 0.0
                for i in range(oh):
                    d = dy[i, ch].reshape(m)
                    xr = xh[i * sh + u, ch].reshape(-1)
                    if sw == 1:
                        src = xr[v * n : v * n + m]
                        for k in range(m):
                            total += np.float64(d[k]) * src[k]
                    else:
                        for j in range(ow):
                            src = xr[(j * sw + v) * n : (j * sw + v + 1) * n]
                            dd = d[j * n : (j + 1) * n]
                            for k in range(n):
                                total += np.float64(dd[k]) * src[k]
                gw[ch, u, v] = total


@nb.njit(**_LOOP)
def depthwise_rows_xgrad(dy, w, sh, sw, dxh):
    """dxh[i*SH + u, c, j*SW + v, n] += w[c, u, v] * dy[i, c, j, n] (dxh zeroed first)."""
    oh, c, ow, n = dy.shape
    kh, kw = w.shape[1], w.shape[2]
    m = ow * n
    for i in range(oh):
        for ch in range(c):
            d = dy[i, ch].reshape(m)
            for u in range(kh):
                xr = dxh[i * sh + u, ch].reshape(-1)
                for v in range(kw):
                    wv = w[ch, u, v]
                    if sw == 1:
                        dst = xr[v * n : v * n + m]
                        for k in range(m):
                            dst[k] += wv * d[k]
                    else:
                        for j in range(ow):
                            dst = xr[(j * sw + v) * n : (j * sw + v + 1) * n]
                            dd = d[j * n : (j + 1) * n]
                            for k in range(n):
                                dst[k] += wv * dd[k]


# --- max pooling, windows that tile (stride = kernel, no padding or dilation) --------------
@nb.njit(**_LOOP)
def maxpool(x, kh, kw, y, idx):
    """y[p,i,q,j,r] = max_{u,v} x[p, i*kh+u, q, j*kw+v, r]; idx = u*kw + v of the winner:
    the first maximum in row-major order, the last NaN if the window holds NaN (torch's
    rule). Offsets are visited one at a time over the innermost axis, which vectorises."""
    np_, oh, nq, ow, nr = y.shape
    for p in range(np_):
        for i in range(oh):
            for q in range(nq):
                for j in range(ow):
                    for r in range(nr):
                        y[p, i, q, j, r] = x[p, i * kh, q, j * kw, r]
                        idx[p, i, q, j, r] = 0
                    for u in range(kh):
                        for v in range(kw):
                            if u == 0 and v == 0:
                                continue
                            k = u * kw + v
                            for r in range(nr):
                                val = x[p, i * kh + u, q, j * kw + v, r]
                                if val > y[p, i, q, j, r] or val != val:
                                    y[p, i, q, j, r] = val
                                    idx[p, i, q, j, r] = k


@nb.njit(**_LOOP)
def maxpool2x2(x, y, idx):
    """``maxpool`` for 2x2 windows, the common case, with the four taps compared in registers.
    Over a long innermost axis r (the batch, in Conv2D's layout) LLVM turns the comparisons
    into vector blends. Over a short one they stay branches, which mispredict on real data
    (measured 10x slower at r = 8): the caller uses ``maxpool2x2_short`` for those, and
    ``maxpool2x2_lanes`` for any r that is a multiple of 8."""
    np_, oh, nq, ow, nr = y.shape
    for p in range(np_):
        for i in range(oh):
            for q in range(nq):
                for j in range(ow):
                    for r in range(nr):
                        best = x[p, 2 * i, q, 2 * j, r]
                        k = 0
                        v = x[p, 2 * i, q, 2 * j + 1, r]
                        if v > best or v != v:
                            best, k = v, 1
                        v = x[p, 2 * i + 1, q, 2 * j, r]
                        if v > best or v != v:
                            best, k = v, 2
                        v = x[p, 2 * i + 1, q, 2 * j + 1, r]
                        if v > best or v != v:
                            best, k = v, 3
                        y[p, i, q, j, r] = best
                        idx[p, i, q, j, r] = k


@nb.njit(**_LOOP)
def maxpool2x2_short(x, y, idx):
    """``maxpool2x2`` for a short innermost axis r that is not a multiple of 8 (a batch of
    1-7 or 9-15 images in Conv2D's layout; plain NCHW memory stays on NumPy, see
    MaxPool2D). Here nothing vectorises, so the comparisons must not be branches: ``max``
    becomes a max instruction and the winning offset is picked by integer arithmetic (6x
    faster than ``maxpool2x2`` at r = 8). ``max`` does not follow torch's rule for NaN, so
    a row of windows that holds one is redone by ``_nan_windows``."""
    np_, oh, nq, ow, nr = y.shape
    for p in range(np_):
        for i in range(oh):
            for q in range(nq):
                bad = False
                for j in range(ow):
                    for r in range(nr):
                        a = x[p, 2 * i, q, 2 * j, r]
                        b = x[p, 2 * i, q, 2 * j + 1, r]
                        c = x[p, 2 * i + 1, q, 2 * j, r]
                        d = x[p, 2 * i + 1, q, 2 * j + 1, r]
                        best = max(a, b)
                        k = np.uint8(b > a)  # strict: the first maximum wins a tie
                        g = np.uint8(c > best)
                        k += g * (2 - k)
                        best = max(best, c)
                        g = np.uint8(d > best)
                        k += g * (3 - k)
                        y[p, i, q, j, r] = max(best, d)
                        idx[p, i, q, j, r] = k
                        bad |= (a != a) | (b != b) | (c != c) | (d != d)
                if bad:
                    _nan_windows(x, 2, 2, p, i, q, y, idx)


# --- 2x2 max pooling over runs of 8: explicit vectors -----------------------------------------
# LLVM vectorises a loop only when it runs at least (vector width) x (unroll) times, 16 for
# these: at a batch of 8 (an innermost axis 8 long, Conv2D's layout) every kernel above runs
# scalar code. numba has no vector type, so these two intrinsics write the LLVM IR of one
# 8-wide step themselves (any CPU: LLVM splits the vectors where registers are narrower).
# The kernels below call them for every 8 elements of the innermost axis, which must be a
# multiple of 8: they check that and the shapes, since the intrinsics do not bound-check.
LANES = 8


def _at(context, builder, arrty, arr, offset):
    """Pointer to element ``offset`` of the 1-D array ``arr`` (type ``arrty``)."""
    return builder.gep(context.make_array(arrty)(context, builder, arr).data, [offset])


def _load(builder, pointer, element):
    vector = ir.VectorType(element, LANES).as_pointer()
    return builder.load(builder.bitcast(pointer, vector), align=1)


def _store(builder, value, pointer):
    builder.store(value, builder.bitcast(pointer, value.type.as_pointer()), align=1)


def _lanes(value, bits=8):
    return ir.Constant(ir.VectorType(ir.IntType(bits), LANES), [value] * LANES)


@intrinsic
def _max4_lanes(typingctx, x, a, b, c, d, y, yo, idx):
    """y[yo:yo+8] = the element-wise maximum of x[a:a+8], x[b:b+8], x[c:c+8], x[d:d+8] and
    idx[yo:yo+8] the run that won (0-3): a later run wins if it is larger or NaN (torch's
    rule: first maximum, last NaN)."""

    def codegen(context, builder, signature, args):
        xt, yt, it = signature.args[0], signature.args[5], signature.args[7]
        xv, av, bv, cv, dv, yv, yov, iv = args
        element = context.get_value_type(xt.dtype)
        runs = [_load(builder, _at(context, builder, xt, xv, o), element) for o in (av, bv, cv, dv)]
        best, k = runs[0], _lanes(0)
        for tap in (1, 2, 3):
            v = runs[tap]
            take = builder.or_(
                builder.fcmp_ordered(">", v, best), builder.fcmp_unordered("uno", v, v)
            )
            best = builder.select(take, v, best)
            k = builder.select(take, _lanes(tap), k)
        _store(builder, best, _at(context, builder, yt, yv, yov))
        _store(builder, k, _at(context, builder, it, iv, yov))
        return context.get_dummy_value()

    return types.void(x, a, b, c, d, y, yo, idx), codegen


@intrinsic
def _route4_lanes(typingctx, dy, yo, idx, dx, a, b, c, d):
    """dx[a:a+8], dx[b:b+8], dx[c:c+8], dx[d:d+8] = dy[yo:yo+8] where idx[yo:yo+8] names
    that run (0-3), else 0."""

    def codegen(context, builder, signature, args):
        dyt, it, dxt = signature.args[0], signature.args[2], signature.args[3]
        dyv, yov, iv, dxv, av, bv, cv, dv = args
        element = context.get_value_type(dyt.dtype)
        g = _load(builder, _at(context, builder, dyt, dyv, yov), element)
        k = _load(builder, _at(context, builder, it, iv, yov), ir.IntType(8))
        zero = ir.Constant(ir.VectorType(element, LANES), None)
        for tap, o in enumerate((av, bv, cv, dv)):
            hit = builder.icmp_unsigned("==", k, _lanes(tap))
            _store(builder, builder.select(hit, g, zero), _at(context, builder, dxt, dxv, o))
        return context.get_dummy_value()

    return types.void(dy, yo, idx, dx, a, b, c, d), codegen


@nb.njit(**_LOOP)
def _lanes_2x2(big, small, idx, backward):
    """The loop nest of the two kernels below, over ``big`` (P, H, Q, W, R) and ``small`` and
    ``idx`` (P, OH, Q, OW, R): for every 8 windows, the four runs of ``big`` under them.
    Forward, their maximum goes into ``small`` and the winner into ``idx``; backward,
    ``small`` (dy) is routed into ``big`` (dx) by ``idx``. Checks first that no access can
    fall outside the arrays: 2*OH <= H, 2*OW <= W, R a multiple of LANES."""
    np_, h, nq, w, nr = big.shape
    _, oh, _, ow, _ = small.shape
    if (
        small.shape[0] != np_
        or small.shape[2] != nq
        or small.shape[4] != nr
        or 2 * oh > h
        or 2 * ow > w
        or nr % LANES
    ):
        raise ValueError("8-lane max pool: shapes do not match")
    if idx.shape != small.shape:
        raise ValueError("8-lane max pool: idx and the pooled array differ in shape")
    bf, sf, kf = big.reshape(-1), small.reshape(-1), idx.reshape(-1)
    row = nq * w * nr  # from big[p, h, q, w, r] to big[p, h + 1, q, w, r]
    for p in range(np_):
        for i in range(oh):
            for q in range(nq):
                a0 = ((p * h + 2 * i) * nq + q) * w * nr
                s0 = ((p * oh + i) * nq + q) * ow * nr
                for j in range(ow):
                    for r in range(0, nr, LANES):
                        a, s = a0 + 2 * j * nr + r, s0 + j * nr + r
                        if backward:
                            _route4_lanes(sf, s, kf, bf, a, a + nr, a + row, a + row + nr)
                        else:
                            _max4_lanes(bf, a, a + nr, a + row, a + row + nr, sf, s, kf)


@nb.njit(**_LOOP)
def maxpool2x2_lanes(x, y, idx):
    """``maxpool2x2`` for C-contiguous arrays whose innermost axis R is a multiple of 8:
    8 windows at a time in vector registers. 5-10x ``maxpool2x2_short`` at R = 8 and a
    little faster than ``maxpool2x2`` at R >= 16; the same values and winners."""
    _lanes_2x2(x, y, idx, False)


@nb.njit(**_LOOP)
def maxpool2x2_grad_lanes(dy, idx, dx):
    """``maxpool_grad`` for 2x2 windows over C-contiguous arrays whose innermost axis is a
    multiple of 8 (2-3x faster at R = 8 to 64); rows and columns no window covers are 0."""
    _lanes_2x2(dx, dy, idx, True)
    np_, oh, nq, ow, _ = dy.shape
    zero = dx.dtype.type(0)
    for p in range(np_):
        for i in range(oh):
            for q in range(nq):
                for u in range(2):  # columns right of the last window
                    rest = dx[p, 2 * i + u, q, 2 * ow :].reshape(-1)
                    for t in range(rest.size):
                        rest[t] = zero
        for ii in range(2 * oh, dx.shape[1]):  # rows below the last window
            rest = dx[p, ii].reshape(-1)
            for t in range(rest.size):
                rest[t] = zero


@nb.njit(**_LOOP)
def _nan_windows(x, kh, kw, p, i, q, y, idx):
    """Redo the windows of row (p, i, q) that hold NaN: y is NaN, idx the last NaN's offset."""
    _, _, _, ow, nr = y.shape
    for j in range(ow):
        for r in range(nr):
            for u in range(kh):
                for v in range(kw):
                    val = x[p, i * kh + u, q, j * kw + v, r]
                    if val != val:
                        y[p, i, q, j, r] = val
                        idx[p, i, q, j, r] = u * kw + v


@nb.njit(**_LOOP)
def maxpool_grad(dy, idx, kh, kw, dx):
    """dx[p, i*kh+u, q, j*kw+v, r] = dy[p,i,q,j,r] where idx says (u, v) won, else 0; rows
    and columns that no window covers are 0."""
    np_, oh, nq, ow, nr = dy.shape
    _, h, _, w, _ = dx.shape
    zero = dx.dtype.type(0)
    for p in range(np_):
        for i in range(oh):
            for q in range(nq):
                for j in range(ow):
                    for u in range(kh):
                        for v in range(kw):
                            k = u * kw + v
                            for r in range(nr):
                                g = dy[p, i, q, j, r]
                                dx[p, i * kh + u, q, j * kw + v, r] = (
                                    g if idx[p, i, q, j, r] == k else zero
                                )
                for u in range(kh):  # columns right of the last window
                    for jj in range(ow * kw, w):
                        for r in range(nr):
                            dx[p, i * kh + u, q, jj, r] = zero
        for ii in range(oh * kh, h):
            for q in range(nq):
                for jj in range(w):
                    for r in range(nr):
                        dx[p, ii, q, jj, r] = zero


# --- Conv2D's weight between torch's order and the row blocks' ---------------------------
@nb.njit(**_LOOP)
def gather_cols(a, step, index, out):
    """out[i, k] = a[i*step + index[k]] for flat ``a``: one permutation of a row's elements,
    applied row by row. Conv2D's weight reorders, three per training step: NumPy copies them
    with an innermost loop KW = 3 long, 3-5x slower (64x128x3x3: 165-180 against 35 us)."""
    ni, nk = out.shape
    for i in range(ni):
        src = a[i * step :]
        dst = out[i]
        for k in range(nk):
            dst[k] = src[index[k]]


# --- the convolution's window copy ------------------------------------------------------------
@nb.njit(**_LOOP)
def gather_rows(xt, pt, pl, sw, r):
    """r[h, c, v, j, n] = xpad[h, c, j*sw + v, n] for the (H, C, W, N) view ``xt`` (any
    strides), zero-padded by pt rows on top and pl columns on the left (and as many at the
    bottom and right as r's shape needs): Conv2D's row windows, padding included, in one pass.
    """
    hp, nc, kw, ow, nn = r.shape
    h, _, w, _ = xt.shape
    zero = r.dtype.type(0)
    for hh in range(hp):
        src = hh - pt
        inside_row = 0 <= src < h
        for c in range(nc):
            for v in range(kw):
                for j in range(ow):
                    col = j * sw + v - pl
                    if inside_row and 0 <= col < w:
                        for n in range(nn):
                            r[hh, c, v, j, n] = xt[src, c, col, n]
                    else:
                        for n in range(nn):
                            r[hh, c, v, j, n] = zero


@nb.njit(**_LOOP)
def gather_rows_s1(x2, pt, pl, nn, r2):
    """``gather_rows`` at stride 1 when x is C-contiguous as (H, C, W*N) (``x2``) and r as
    (Hp, C, KW, OW*N) (``r2``), N = ``nn``: then r[h, c, v] is one contiguous run of x's
    row, columns v - pl .. v - pl + OW - 1, with zeros for the columns on the padding. One
    long loop per run vectorises at any N (the general kernel's innermost loop is N long:
    scalar code at a batch of 8, 2.5x slower)."""
    hp, nc, kw, m = r2.shape
    h, _, wn = x2.shape
    ow, w = m // nn, wn // nn
    zero = r2.dtype.type(0)
    for hh in range(hp):
        src = hh - pt
        for c in range(nc):
            for v in range(kw):
                dst = r2[hh, c, v]
                if src < 0 or src >= h:
                    for t in range(m):
                        dst[t] = zero
                    continue
                jlo = min(max(pl - v, 0), ow)
                jhi = max(min(w + pl - v, ow), jlo)
                lo, hi = jlo * nn, jhi * nn
                for t in range(lo):
                    dst[t] = zero
                seg = dst[lo:hi]
                row = x2[src, c, (jlo + v - pl) * nn : (jhi + v - pl) * nn]
                for t in range(hi - lo):
                    seg[t] = row[t]
                tail = dst[hi:]
                for t in range(m - hi):
                    tail[t] = zero


@nb.njit(**_LOOP)
def scatter_rows(cols, i0, sh, sw, pt, pl, dx):
    """The adjoint of ``gather_rows`` after the GEMM, for Conv2D's input gradient:
    dx[h, c, w, n] += cols[i - i0, u, c, v, j, n] for every (i, u, v, j) with
    h = i*sh + u - pt and w = j*sw + v - pl (window cells on the padding are dropped).
    ``cols`` is (rows, KH, C, KW, OW, N), output rows i0 .. i0 + rows - 1; dx (H, C, W, N)
    is zeroed first when i0 is 0. One pass replaces KH row additions and the KW-fold
    column fold, each a full sweep in NumPy."""
    rows, kh, nc, kw, ow, nn = cols.shape
    h, _, w, _ = dx.shape
    zero = dx.dtype.type(0)
    if i0 == 0:
        for a in range(h):
            for c in range(nc):
                for b in range(w):
                    for n in range(nn):
                        dx[a, c, b, n] = zero
    for ii in range(rows):
        i = i0 + ii
        for u in range(kh):
            a = i * sh + u - pt
            if a < 0 or a >= h:
                continue
            for c in range(nc):
                for v in range(kw):
                    for j in range(ow):
                        b = j * sw + v - pl
                        if 0 <= b < w:
                            for n in range(nn):
                                dx[a, c, b, n] += cols[ii, u, c, v, j, n]


# --- Softmax cross-entropy over (N, K) logits ---------------------------------------------
@nb.njit(**_LOOP)
def softmax_xent(z, labels, probs):
    """Row by row: probs = exp(z - max) / sum, in z's dtype; returns (sum over rows of
    log(sum) - (z[label] - max) in float64, -1), or (0, n) for the first row n whose label
    is outside [0, K), before anything is computed. The same formula, step by step, as the
    NumPy path (CrossEntropyLoss), which does it in a dozen whole-array passes."""
    nn, nk = z.shape
    for n in range(nn):
        y = labels[n]
        if y < 0 or y >= nk:
            return 0.0, n
    total = 0.0
    for n in range(nn):
        row = z[n]
        p = probs[n]
        top = row[0]
        for j in range(1, nk):
            v = row[j]
            if v > top or v != v:  # a NaN wins, as in np.max
                top = v
        s = row.dtype.type(0)
        for j in range(nk):
            e = np.exp(row[j] - top)
            p[j] = e
            s += e
        for j in range(nk):
            p[j] /= s
        total += np.log(np.float64(s)) - (np.float64(row[labels[n]]) - np.float64(top))
    return total, -1


@nb.njit(**_LOOP)
def softmax_xent_grad(probs, labels, divisor, out):
    """out = (probs - onehot(labels)) / divisor (divisor 1 for a sum)."""
    nn, nk = probs.shape
    d = probs.dtype.type(divisor)
    one = probs.dtype.type(1)
    for n in range(nn):
        for j in range(nk):
            out[n, j] = probs[n, j] / d
        y = labels[n]
        out[n, y] = (probs[n, y] - one) / d


# --- inference plans (engine.inference): activations as (C, N, H, W) ----------------------
# The plans keep 4-D activations channel-first, (C, N, H, W) ("CN"): one GEMM then covers
# the whole batch with no transpose, and for one image it is NCHW itself.
@nb.njit(**_LOOP)
def _inside(n, size, step, offset):
    """The range [j0, j1) of output positions j < n whose input position j*step + offset
    lies in [0, size)."""
    j0 = 0
    while j0 < n and j0 * step + offset < 0:
        j0 += 1
    j1 = n
    while j1 > j0 and (j1 - 1) * step + offset >= size:
        j1 -= 1
    return j0, j1


@nb.njit(**_LOOP)
def im2col_cn(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, cols):
    """cols[(c*KH + u)*KW + v, n*OH*OW + i*OW + j] = x[c, n, i*SH + u*DH - PT, j*SW + v*DW -
    PL], 0 where that position falls on the padding: the layer's im2col matrix (rows in the
    order its (O, C*KH*KW) weight reads them) for the whole batch, without a padded copy.

    Stride 1 with "same" padding (output planes as large as the input's): cols row (u, v)
    is x[c] read flat from an offset, one run over the whole batch, with the positions that
    wrapped into a neighbouring row or image set to 0 by a mask made once per call. Small
    planes (ResNet's 4x4 and 2x2) are then as fast as large ones. Otherwise one stretch of
    an input row per output row."""
    c, n, h, wd = x.shape
    zero = cols.dtype.type(0)
    m = oh * ow
    if sh == 1 and sw == 1 and oh == h and ow == wd:
        total = n * m
        mask = np.zeros((kh * kw, total), np.bool_)
        for u in range(kh):
            i0, i1 = _inside(oh, h, 1, u * dh - pt)
            for v in range(kw):
                j0, j1 = _inside(ow, wd, 1, v * dw - pl)
                mk = mask[u * kw + v]
                for b in range(n):
                    for i in range(i0, i1):
                        cells = mk[b * m + i * ow + j0 : b * m + i * ow + j1]
                        for k in range(j1 - j0):
                            cells[k] = True
        for ch in range(c):
            xf = x[ch].reshape(-1)
            for u in range(kh):
                for v in range(kw):
                    row = cols[(ch * kh + u) * kw + v]
                    shift = (u * dh - pt) * wd + v * dw - pl
                    lo = max(0, -shift)
                    hi = min(total, total - shift)
                    for k in range(lo):
                        row[k] = zero
                    for k in range(hi, total):
                        row[k] = zero
                    dst, src, mk = row[lo:hi], xf[lo + shift : hi + shift], mask[u * kw + v, lo:hi]
                    for k in range(hi - lo):
                        dst[k] = src[k] if mk[k] else zero
        return
    # Flat, unsigned indices: a slice per row costs more than a short row's copy, and an
    # unsigned index needs no negative-index test.
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    for ch in range(c):
        for u in range(kh):
            for v in range(kw):
                base = np.uint64(((ch * kh + u) * kw + v) * n * m)
                off = v * dw - pl
                j0, j1 = _inside(ow, wd, sw, off)
                i0, i1 = _inside(oh, h, sh, u * dh - pt)
                for b in range(n):
                    seg = base + np.uint64(b * m)
                    for k in range(np.uint64(i0 * ow)):
                        cf[seg + k] = zero
                    for k in range(np.uint64(i1 * ow), np.uint64(m)):
                        cf[seg + k] = zero
                    for i in range(i0, i1):
                        d = seg + np.uint64(i * ow)
                        for k in range(np.uint64(j0)):
                            cf[d + k] = zero
                        for k in range(np.uint64(j1), np.uint64(ow)):
                            cf[d + k] = zero
                        src = np.uint64(((ch * n + b) * h + i * sh + u * dh - pt) * wd)
                        src += np.uint64(j0 * sw + off)
                        d += np.uint64(j0)
                        if sw == 1:
                            for k in range(np.uint64(j1 - j0)):
                                cf[d + k] = xf[src + k]
                        else:
                            step = np.uint64(sw)
                            for k in range(np.uint64(j1 - j0)):
                                cf[d + k] = xf[src + k * step]


@nb.njit(**_LOOP)
def depthwise_planes(x, w, sh, sw, pt, pl, out):
    """out[c, n, i, j] = sum_{u, v} w[c, u, v] * xpad[c, n, i*SH + u, j*SW + v], xpad being x
    padded by PT rows and PL columns of zeros (and as many at the far sides as the last
    window needs), for C-contiguous (C, N, H, W) x and out: one plane at a time.

    Each padded plane is split into its SH*SW phases (rows r = a mod SH, columns q = b mod
    SW), each a flat scratch of row length PW = ceil(WP / SW). Output (i, j) and tap (u, v)
    read phase (u mod SH, v mod SW) at row i + u // SH, column j + v // SW: over all
    outputs (j running to PW, the columns past OW thrown away) a tap is one contiguous
    run, acc[:] += w * phase[(u // SH)*PW + v // SW :][: OH*PW], which vectorises whatever
    the stride. (Row by row, a 16x16 plane's runs were 8 strided values each: 4x slower.)"""
    c, n, h, wd = x.shape
    oh, ow = out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    zero = out.dtype.type(0)
    ph = ((oh - 1) * sh + kh + sh - 1) // sh + 1  # rows per phase (+1: a run may spill)
    pw = ((ow - 1) * sw + kw + sw - 1) // sw
    size = ph * pw
    phases = np.zeros(sh * sw * size, out.dtype)
    m = oh * pw
    acc = np.empty(m, out.dtype)
    for ch in range(c):
        wc = w[ch]
        for b in range(n):
            xc, oc = x[ch, b], out[ch, b]
            for k in range(phases.size):
                phases[k] = zero
            for pa in range(sh):
                for pb in range(sw):
                    base = (pa * sw + pb) * size
                    j0, j1 = _inside(pw, wd, sw, pb - pl)  # phase columns inside x
                    for y in range(ph):
                        r = y * sh + pa - pt
                        if r < 0 or r >= h or j1 <= j0:
                            continue
                        dst = phases[base + y * pw + j0 : base + y * pw + j1]
                        src = xc[r, j0 * sw + pb - pl : (j1 - 1) * sw + pb - pl + 1 : sw]
                        for k in range(j1 - j0):
                            dst[k] = src[k]
            for k in range(m):
                acc[k] = zero
            for u in range(kh):
                for v in range(kw):
                    wv = wc[u, v]
                    start = ((u % sh) * sw + v % sw) * size + (u // sh) * pw + v // sw
                    run = phases[start : start + m]
                    for k in range(m):
                        acc[k] += wv * run[k]
            for i in range(oh):
                row, got = oc[i], acc[i * pw : i * pw + ow]
                for k in range(ow):
                    row[k] = got[k]


@nb.njit(**_LOOP)
def depthwise_hwc(x, w, sh, sw, pt, pl, out):
    """What ``depthwise_planes`` computes, with the channels innermost: each image is copied
    into a zero-padded (HP, WP, C) scratch and each output pixel adds, tap by tap, a run of
    C products w[u, v, :] * plane[i*SH + u, j*SW + v, :]; the result goes back to (C, N,
    OH, OW). For small planes with many channels (the end of a MobileNet: 960 channels of
    2x2) the runs are long where the plane kernel's are a few values each."""
    c, n, h, wd = x.shape
    oh, ow = out.shape[2], out.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    zero = out.dtype.type(0)
    hp = max((oh - 1) * sh + kh, h + pt)
    wp = max((ow - 1) * sw + kw, wd + pl)
    plane = np.zeros((hp, wp, c), out.dtype)
    acc = np.empty((oh, ow, c), out.dtype)
    wt = np.empty((kh, kw, c), out.dtype)
    for u in range(kh):
        for v in range(kw):
            for ch in range(c):
                wt[u, v, ch] = w[ch, u, v]
    for b in range(n):
        for r in range(h):
            for q in range(wd):
                dst = plane[r + pt, q + pl]
                for ch in range(c):
                    dst[ch] = x[ch, b, r, q]
        for i in range(oh):
            for j in range(ow):
                cell = acc[i, j]
                for ch in range(c):
                    cell[ch] = zero
                for u in range(kh):
                    for v in range(kw):
                        src, wuv = plane[i * sh + u, j * sw + v], wt[u, v]
                        for ch in range(c):
                            cell[ch] += wuv[ch] * src[ch]
        for ch in range(c):
            ob = out[ch, b]
            for i in range(oh):
                row = ob[i]
                for j in range(ow):
                    row[j] = acc[i, j, ch]


@nb.njit(**_LOOP)
def affine_act(y, scale, shift, act, p0, p1):
    """In place over y (A, C, B): v = y * scale[c] + shift[c] (1 and 0 where the array is
    empty), then the activation ``act``: 0 none, 1 ReLU, 2 clip to [p0, p1] (ReLU6, Clip;
    an absent bound is -inf / inf), 3 LeakyReLU (slope p0), 4 Hardsigmoid (alpha p0, beta
    p1), 5 Hardswish. Each formula in the layer's own order of operations; NaN stays NaN as
    it does there. One loop per activation, each storing every element: a loop that stores
    only where a test holds (v < 0) does not vectorise (10x slower, measured)."""
    na, nc, nb_ = y.shape
    t = y.dtype.type
    zero, one, three, six = t(0), t(1), t(3), t(6)
    lo, hi = t(p0), t(p1)
    for a in range(na):
        for c in range(nc):
            row = y[a, c]
            s = scale[c] if scale.size else one
            d = shift[c] if shift.size else zero
            if act == 0:
                for k in range(nb_):
                    row[k] = row[k] * s + d
            elif act == 1:
                for k in range(nb_):
                    v = row[k] * s + d
                    row[k] = zero if v < zero else v
            elif act == 2:
                for k in range(nb_):
                    v = row[k] * s + d
                    v = lo if v < lo else v
                    row[k] = hi if v > hi else v
            elif act == 3:
                for k in range(nb_):
                    v = row[k] * s + d
                    row[k] = v * (one if v > zero else lo)
            elif act == 4:
                for k in range(nb_):
                    v = (row[k] * s + d) * lo + hi
                    v = zero if v < zero else v
                    row[k] = one if v > one else v
            elif act == 5:
                for k in range(nb_):
                    v = row[k] * s + d
                    g = v + three
                    g = zero if g < zero else g
                    g = six if g > six else g
                    row[k] = v * (g / six)


@nb.njit(**_LOOP)
def maxpool_planes(x, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """out[a, b, i, j] = max over the taps (u, v) inside x of x[a, b, i*SH + u*DH - PT,
    j*SW + v*DW - PL], for any two leading axes (NCHW or (C, N, H, W)): padding and a
    ceil-mode window's overhang read as -inf, NaN wins as in the layer. Per output row,
    each tap takes the maximum with one stretch of an input row."""
    n, c, h, wd = x.shape
    oh, ow = out.shape[2], out.shape[3]
    low = out.dtype.type(-np.inf)
    if (
        sh == kh and sw == kw and dh == 1 and dw == 1 and pt == 0 and pl == 0
        and oh * kh <= h and ow * kw <= wd
    ):  # fmt: skip
        # Windows that tile x: per output row, the maximum over the KH input rows first
        # (one contiguous run), then over each KW neighbours of that run.
        span = ow * kw
        rows = np.empty(span, out.dtype)
        for b in range(n):
            for ch in range(c):
                xc, oc = x[b, ch], out[b, ch]
                for i in range(oh):
                    first = xc[i * kh, :span]
                    for k in range(span):
                        rows[k] = first[k]
                    for u in range(1, kh):
                        more = xc[i * kh + u, :span]
                        for k in range(span):
                            m, a = rows[k], more[k]
                            rows[k] = a if (a > m or a != a) else m
                    row = oc[i]
                    for j in range(ow):
                        m = rows[j * kw]
                        for v in range(1, kw):
                            a = rows[j * kw + v]
                            m = a if (a > m or a != a) else m
                        row[j] = m
        return
    j0s = np.empty(kw, np.int64)
    j1s = np.empty(kw, np.int64)
    for v in range(kw):
        j0s[v], j1s[v] = _inside(ow, wd, sw, v * dw - pl)
    for b in range(n):
        for ch in range(c):
            xc, oc = x[b, ch], out[b, ch]
            for i in range(oh):
                row = oc[i]
                for k in range(ow):
                    row[k] = low
                for u in range(kh):
                    r = i * sh + u * dh - pt
                    if r < 0 or r >= h:
                        continue
                    for v in range(kw):
                        j0, j1 = j0s[v], j1s[v]
                        if j1 <= j0:
                            continue
                        dst = row[j0:j1]
                        start = j0 * sw + v * dw - pl
                        src = xc[r, start : start + (j1 - j0 - 1) * sw + 1 : sw]
                        for k in range(j1 - j0):
                            m, a = dst[k], src[k]
                            dst[k] = a if (a > m or a != a) else m


# exp(a) = 2^n * e^g, n = round(a / ln 2), g = a - n * ln 2 (in two parts, so g keeps its
# low bits: |g| <= ln 2 / 2), e^g by its Taylor series to g^7 (relative error below 1e-8),
# 2^n written straight into a float's exponent bits.
_EXP = (1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = HI + LO, HI exact in 9 bits
# NumPy's division rules (x / 0 = inf, no ZeroDivisionError test): the test is a branch in
# every iteration, and a loop with one is not vectorised.
_DIV = {**_LOOP, "error_model": "numpy"}


@nb.njit(**_DIV)
def affine_sigmoid32(y, scale, shift, silu):
    """In place over float32 y (A, C, B): v = y * scale[c] + shift[c] (1 and 0 where the
    array is empty), then v / (1 + exp(-v)) (SiLU, ``silu``) or 1 / (1 + exp(-v)) (Sigmoid).

    numba calls libm's exp once per element; here exp(-v) is three loops LLVM vectorises:
    -v clamped to [-87, 88.8]; -v / ln 2 + 1.5 * 2^23 rounds to the integer n held in its
    low bits (kept, as float32, in a scratch), and e^g, g = -v - n ln 2, is a polynomial;
    the scratch read as int32 becomes the bits of 2^n, (n + 127) << 23 (n = 128 gives inf,
    so SiLU(-inf) is NaN as in the layer); then one division. 2-3x NumPy's exp on 1.5 M
    values; within 1e-6 of the layers' results (tests/engine/test_inference_plan.py)."""
    na, nc, nb_ = y.shape
    t = np.float32
    c2, c3, c4, c5, c6, c7 = (t(_EXP[0]), t(_EXP[1]), t(_EXP[2]), t(_EXP[3]), t(_EXP[4]),
                              t(_EXP[5]))  # fmt: skip
    zero, one = t(0), t(1)
    log2e, hi_ln2, lo_ln2 = t(1.4426950408889634), t(_LN2_HI), t(_LN2_LO)
    low, high, magic = t(-87.0), t(88.8), t(12582912.0)
    bias = np.int32(0x4B400000 - 127)  # the bits of 1.5 * 2^23, less the exponent's bias
    rbuf = np.empty(nb_, np.float32)
    pbuf = np.empty(nb_, np.float32)
    bits = rbuf.view(np.int32)
    for a in range(na):
        for c in range(nc):
            row = y[a, c]
            s = scale[c] if scale.size else one
            d = shift[c] if shift.size else zero
            for k in range(nb_):
                v = row[k] * s + d
                row[k] = v
                e = -v  # exp(e), e clamped where exp(e) is 0 or inf in float32 anyway
                e = low if e < low else e
                e = high if e > high else e
                r = e * log2e + magic
                rbuf[k] = r
                n = r - magic
                g = (e - n * hi_ln2) - n * lo_ln2
                p = c7
                p = p * g + c6
                p = p * g + c5
                p = p * g + c4
                p = p * g + c3
                p = p * g + c2
                p = p * g + one
                pbuf[k] = p * g + one
            for k in range(nb_):
                bits[k] = (bits[k] - bias) << 23
            if silu:
                for k in range(nb_):
                    row[k] = row[k] / (one + pbuf[k] * rbuf[k])
            else:
                for k in range(nb_):
                    row[k] = one / (one + pbuf[k] * rbuf[k])
