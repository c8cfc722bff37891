"""Per-op rules of the channel analysis: how each op couples, creates, consumes and transforms
channels (``analyze``), and how it is rewritten once some channel groups are removed (``shrink``).

A rule's ``analyze`` returns an ``Effect`` or None; None means "not understood here" and the
driver blocks every channel that touches the node. Rules only accept what they can prove:
constant weights and parameters, static sizes on the channel axis, attributes they know.
Values: ``Track.values`` holds, per channel, the constant the channel equals everywhere (over
batch, space and every other axis), NaN when unknown. Rules compute them in float64.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from .channels import Effect, Env, ExitSpec, Producer, Track, const_array, is_empty

NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# small helpers


def _attr(node: gs.Node, name: str, default=None):
    return node.attrs.get(name, default)


def _finite(values: np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(out), out, NAN)


def _norm_axis(axis: int, rank: int) -> int | None:
    axis = int(axis)
    if axis < 0:
        axis += rank
    return axis if 0 <= axis < rank else None


def _input(node: gs.Node, slot: int) -> gs.Tensor | None:
    if slot < len(node.inputs) and not is_empty(node.inputs[slot]):
        return node.inputs[slot]
    return None


def _is_float(a: np.ndarray | None) -> bool:
    return a is not None and a.dtype.kind == "f"


def _same(track: Track, values: np.ndarray | None = None) -> Track:
    """The same channels, optionally with new values (elementwise ops)."""
    return Track(track.axis, track.rank, track.atoms, track.values if values is None else values)


def _uses(t: gs.Tensor) -> bool:
    return bool(t.outputs)


def _no_spatial_padding(node: gs.Node) -> bool:
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "VALID"):
        return False
    return all(int(p) == 0 for p in (_attr(node, "pads", None) or []))


def _unions_within(groups: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs that tie every atom of each listed set to the set's first atom."""
    a, b = [], []
    for members in groups:
        if members.size > 1:
            a.append(np.full(members.size - 1, members[0]))
            b.append(members[1:])
    return [(np.concatenate(a), np.concatenate(b))] if a else []


class Rule:
    """Base: subclasses implement ``analyze``; ``shrink`` defaults to nothing to rewrite."""

    def analyze(self, node: gs.Node, env: Env) -> Effect | None:  # pragma: no cover - protocol
        raise NotImplementedError

    def shrink(self, node: gs.Node, plan: dict, sh) -> None:
        return None


class OneInputRule(Rule):
    """Base for ops whose channels come from input 0: an untracked input leaves nothing to say."""

    def analyze(self, node, env):
        x = _input(node, 0)
        tx = env.track(x) if x is not None else None
        return Effect() if tx is None else self.analyze_tracked(node, env, tx)

    def analyze_tracked(self, node, env, tx: Track) -> Effect | None:  # pragma: no cover - protocol
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# layers that create and consume channels


class ConvRule(Rule):
    """Conv: output rows are new channels; input channels are consumed (group 1) or tied to the
    output channels of their group (grouped/depthwise: a group goes as a whole, ``group`` shrinks).

    A constant input channel folds into the bias when nothing pads it; a padded convolution sees
    zeros at the border instead, so with ``border`` its exact contribution is rebuilt by a
    one-channel convolution of a map of ones (Shrinker.add_border_term), else it stays."""

    def __init__(self, border: bool = True):
        self.border = border

    def analyze(self, node, env):
        x, w_t, b_t = _input(node, 0), _input(node, 1), _input(node, 2)
        w = env.const(w_t)
        if x is None or not _is_float(w) or w.ndim < 3:
            return None
        b = env.const(b_t) if b_t is not None else None
        if b_t is not None and (b is None or b.shape != (w.shape[0],)):
            return None
        group = int(_attr(node, "group", 1))
        co, cin_pg = int(w.shape[0]), int(w.shape[1])
        if group < 1 or co % group:
            return None
        cout_pg, ci = co // group, cin_pg * group
        tx = env.track(x)
        if tx is not None and (tx.axis != 1 or tx.size != ci):
            return None
        nopad = _no_spatial_padding(node)
        flat = w.reshape(co, cin_pg, -1)
        zero = ~np.any(flat != 0, axis=2)                       # [co, cin_pg] weight block is zero
        sums = flat.sum(axis=2, dtype=np.float64)
        vin = tx.values if tx is not None else np.full(ci, NAN)
        gidx = (np.arange(co) // cout_pg)[:, None] * cin_pg + np.arange(cin_pg)[None, :]
        v = vin[gidx]
        usable = np.isfinite(v) & ((v == 0) | nopad)
        known = (zero | usable).all(axis=1)
        contrib = np.where(~zero & np.isfinite(v), v * sums, 0.0).sum(axis=1)
        bias = b.astype(np.float64) if b is not None else np.zeros(co)
        out = env.fresh(co)
        effect = Effect(outputs={0: Track(1, tx.rank if tx else len(w.shape), out,
                                          _finite(np.where(known, bias + contrib, NAN)))},
                        handled={0} if tx is not None else set(),
                        producers=[_rows(out, w.reshape(co, -1), co)],
                        plan={"group": group, "cout_pg": cout_pg, "cin_pg": cin_pg, "nopad": nopad,
                              "spatial": _static_spatial(env.shape(x))})
        fold_ok = (nopad or (self.border and env.opset >= 9)) and w.dtype in (np.float32, np.float64)
        return _link_groups(effect, tx, out, group, cin_pg, cout_pg,
                            ExitSpec(0, fold_ok, np.abs(flat).sum(axis=(0, 2), dtype=np.float64)))

    def shrink(self, node, plan, sh):
        x, y = node.inputs[0], node.outputs[0]
        w = sh.const(node.inputs[1])
        b_t = _input(node, 2)
        b = sh.const(b_t) if b_t is not None else None
        m_in, m_out = sh.keep(x), sh.keep(y)
        co = w.shape[0]
        rows = m_out if m_out is not None else np.ones(co, bool)
        border = None
        if plan["group"] == 1:
            if m_in is not None:
                gone = w[:, ~m_in].astype(np.float64)
                fold = sh.fold_values(x)[~m_in]
                if not plan["nopad"] and self.border and sh.opset >= 9:
                    # proven constants meet the padding: sum_c v_c * W[:, c] seen through one
                    # channel of ones; anything else (lossy means) folds into the bias, approximately
                    proven = sh.proven_values(x)[~m_in]
                    if np.any(proven != 0):
                        border = np.einsum("oc...,c->o...", gone, proven)[:, None]
                    fold = np.where(proven != 0, 0.0, fold)
                if np.any(fold != 0):
                    delta = gone.reshape(co, gone.shape[1], -1).sum(axis=2) @ fold
                    b = (b.astype(np.float64) if b is not None else np.zeros(co)) + delta
                w = w[:, m_in]
        else:
            kept_groups = int(rows.sum()) // plan["cout_pg"]
            sh.set_attr(node, "group", kept_groups)
        if border is not None:
            sh.add_border_term(node, border[rows].astype(w.dtype), plan["spatial"])
        w = w[rows]
        sh.set_input(node, 1, w)
        if b is not None:
            b = np.asarray(b)[rows].astype(w.dtype)
            if b_t is not None:
                sh.set_input(node, 2, b)
            else:
                sh.add_input(node, 2, b, "bias")


def _link_groups(effect: Effect, tx: Track | None, out: np.ndarray, group: int, cin_pg: int, cout_pg: int,
                 exit_spec: ExitSpec) -> Effect:
    """How a (transposed) convolution ties channels: with one group its input channels leave
    the flow through ``exit_spec``; with several, each group's input and output channels go
    together (``group`` shrinks); an untracked input with groups pins the outputs."""
    if group == 1:
        if tx is not None:
            effect.exits.append(exit_spec)
    elif tx is not None:
        effect.unions += _unions_within([np.concatenate([tx.atoms[k * cin_pg:(k + 1) * cin_pg],
                                                         out[k * cout_pg:(k + 1) * cout_pg]])
                                         for k in range(group)])
    else:
        effect.blocks.append(out)
    return effect


def _static_spatial(shape: list[int | None] | None) -> tuple[int, ...] | None:
    """The spatial dims of an N x C x ... input when every one is fixed, else None."""
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    return tuple(int(d) for d in shape[2:])


def _rows(atoms: np.ndarray, rows: np.ndarray, count: int) -> Producer:
    r = rows.astype(np.float64, copy=False)
    return Producer(None, atoms, np.abs(r).sum(axis=1), (r * r).sum(axis=1), int(rows.shape[1]) if rows.ndim > 1 else 1)


class ConvTransposeRule(Rule):
    """ConvTranspose: like Conv with the weight's first two axes swapped. A constant input
    channel is spread unevenly over the output, so only zero channels leave exactly."""

    def analyze(self, node, env):
        x, w_t, b_t = _input(node, 0), _input(node, 1), _input(node, 2)
        w = env.const(w_t)
        if x is None or not _is_float(w) or w.ndim < 3:
            return None
        b = env.const(b_t) if b_t is not None else None
        group = int(_attr(node, "group", 1))
        ci, cout_pg = int(w.shape[0]), int(w.shape[1])
        if group < 1 or ci % group:
            return None
        co, cin_pg = cout_pg * group, ci // group
        if b_t is not None and (b is None or b.shape != (co,)):
            return None
        tx = env.track(x)
        if tx is not None and (tx.axis != 1 or tx.size != ci):
            return None
        flat = w.reshape(ci, cout_pg, -1)
        zero = ~np.any(flat != 0, axis=2)                       # [ci, cout_pg]
        vin = tx.values if tx is not None else np.full(ci, NAN)
        known = np.empty(co, bool)
        for j in range(co):
            k, jl = divmod(j, cout_pg)
            rows = slice(k * cin_pg, (k + 1) * cin_pg)
            known[j] = bool(np.all(zero[rows, jl] | (vin[rows] == 0)))
        bias = b.astype(np.float64) if b is not None else np.zeros(co)
        out = env.fresh(co)
        cols = np.moveaxis(w.reshape(group, cin_pg, cout_pg, -1), 2, 1).reshape(co, -1)
        effect = Effect(outputs={0: Track(1, tx.rank if tx else w.ndim, out, _finite(np.where(known, bias, NAN)))},
                        handled={0} if tx is not None else set(),
                        producers=[_rows(out, cols, co)],
                        plan={"group": group, "cout_pg": cout_pg, "cin_pg": cin_pg})
        return _link_groups(effect, tx, out, group, cin_pg, cout_pg,
                            ExitSpec(0, False, np.abs(flat).sum(axis=(1, 2), dtype=np.float64)))

    def shrink(self, node, plan, sh):
        x, y = node.inputs[0], node.outputs[0]
        w = sh.const(node.inputs[1])
        b_t = _input(node, 2)
        m_in, m_out = sh.keep(x), sh.keep(y)
        if plan["group"] == 1:
            if m_in is not None:
                w = w[m_in]
            if m_out is not None:
                w = w[:, m_out]
        else:
            groups = (m_out if m_out is not None else np.ones(plan["group"] * plan["cout_pg"], bool))
            sh.set_attr(node, "group", int(groups.sum()) // plan["cout_pg"])
            if m_in is not None:
                w = w[m_in]
        sh.set_input(node, 1, w)
        if b_t is not None and m_out is not None:
            sh.set_input(node, 2, sh.const(b_t)[m_out])


class GemmRule(Rule):
    """Gemm with constant B: columns of op(B) are new channels, rows consume A's channels.
    A constant channel folds exactly into C (created when absent)."""

    def analyze(self, node, env):
        a_t, b_t, c_t = _input(node, 0), _input(node, 1), _input(node, 2)
        b = env.const(b_t)
        if a_t is None or not _is_float(b) or b.ndim != 2 or int(_attr(node, "transA", 0)):
            return None
        bm = b.T if int(_attr(node, "transB", 0)) else b
        k, n = bm.shape
        c = env.const(c_t) if c_t is not None else None
        if c_t is not None and (c is None or c.ndim > 2 or (c.ndim and c.shape[-1] not in (1, n))):
            return None
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        ta = env.track(a_t)
        if ta is not None and (ta.axis != 1 or ta.rank != 2 or ta.size != k):
            return None
        values = _matmul_values(ta.values if ta is not None else np.full(k, NAN), bm)
        values = alpha * values + beta * _column_constants(c, n)
        out = env.fresh(n)
        effect = Effect(outputs={0: Track(1, 2, out, _finite(values))},
                        handled={0} if ta is not None else set(),
                        producers=[_rows(out, bm.T, n)], plan={"n": n})
        if ta is not None:
            effect.exits.append(ExitSpec(0, (beta != 0 or c_t is None) and b.dtype in (np.float32, np.float64),
                                         np.abs(bm).sum(axis=1, dtype=np.float64)))
        return effect

    def shrink(self, node, plan, sh):
        a_t, y = node.inputs[0], node.outputs[0]
        b = sh.const(node.inputs[1])
        trans = int(_attr(node, "transB", 0))
        bm = b.T if trans else b
        c_t = _input(node, 2)
        c = sh.const(c_t) if c_t is not None else None
        m_in, m_out = sh.keep(a_t), sh.keep(y)
        n = plan["n"]
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        if m_in is not None:
            fold = sh.fold_values(a_t)[~m_in]
            if np.any(fold != 0):
                delta = alpha * (fold @ bm[~m_in].astype(np.float64))
                if c is None:
                    c, beta = np.zeros(n), 1.0
                    sh.set_attr(node, "beta", 1.0)
                c = (c.astype(np.float64) + delta / beta).astype(b.dtype)
            bm = bm[m_in]
        if m_out is not None:
            bm = bm[:, m_out]
            if c is not None and c.ndim and c.shape[-1] == n:
                c = c[..., m_out]
        sh.set_input(node, 1, bm.T if trans else bm)
        if c is not None:
            if c_t is None:
                sh.add_input(node, 2, np.asarray(c, dtype=b.dtype), "bias")
            else:
                sh.set_input(node, 2, np.asarray(c, dtype=sh.const(c_t).dtype))


def _matmul_values(v: np.ndarray, bm: np.ndarray) -> np.ndarray:
    """Per output column: sum_i v_i * B[i, j], known when every nonzero B[i, j] meets a known v_i."""
    zero = bm == 0
    known = (zero | np.isfinite(v)[:, None]).all(axis=0)
    vals = np.where(np.isfinite(v), v, 0.0) @ np.where(zero, 0.0, bm.astype(np.float64))
    return np.where(known, vals, NAN)


def _column_constants(c: np.ndarray | None, n: int) -> np.ndarray:
    """Per output column, Gemm's C if it is the same in every row."""
    if c is None:
        return np.zeros(n)
    c2 = np.asarray(c, dtype=np.float64)
    c2 = c2.reshape((1,) * (2 - c2.ndim) + c2.shape)
    c2 = np.broadcast_to(c2, (c2.shape[0], n))
    uniform = (c2 == c2[:1]).all(axis=0)
    return np.where(uniform, c2[0], NAN)


class MatMulRule(Rule):
    """MatMul with a constant 2-D right operand: like Gemm on the last axis. A constant channel
    folds into a bias Add inserted after the MatMul. A left operand tracked on another axis
    passes through row-wise."""

    def analyze(self, node, env):
        a_t, b_t = _input(node, 0), _input(node, 1)
        b = env.const(b_t)
        if a_t is None or not _is_float(b) or b.ndim != 2:
            return None
        shape = env.shape(a_t)
        if shape is None or len(shape) < 2:
            return None
        rank = len(shape)
        k, n = b.shape
        ta = env.track(a_t)
        if ta is not None and ta.rank != rank:
            return None
        if ta is not None and ta.axis != rank - 1:  # rows of A pass through, each mixed over B's columns
            return Effect(outputs={0: _same(ta, np.where(ta.values == 0, 0.0, NAN))}, handled={0})
        if ta is not None and ta.size != k:
            return None
        values = _matmul_values(ta.values if ta is not None else np.full(k, NAN), b)
        out = env.fresh(n)
        effect = Effect(outputs={0: Track(rank - 1, rank, out, _finite(values))},
                        handled={0} if ta is not None else set(),
                        producers=[_rows(out, b.T, n)], plan={"n": n})
        if ta is not None:
            effect.exits.append(ExitSpec(0, b.dtype in (np.float32, np.float64),
                                         np.abs(b).sum(axis=1, dtype=np.float64)))
        return effect

    def shrink(self, node, plan, sh):
        a_t, y = node.inputs[0], node.outputs[0]
        if "n" not in plan:
            return
        b = sh.const(node.inputs[1])
        m_in, m_out = sh.keep(a_t), sh.keep(y)
        bias = None
        if m_in is not None:
            fold = sh.fold_values(a_t)[~m_in]
            if np.any(fold != 0):
                bias = fold @ b[~m_in].astype(np.float64)
            b = b[m_in]
        if m_out is not None:
            b = b[:, m_out]
        sh.set_input(node, 1, b)
        if bias is None:
            return
        add, slot = _bias_add(y, plan["n"], sh)
        if add is not None:  # fold into the bias Add that follows (it is cut with y's mask itself)
            old = sh.const(add.inputs[slot])
            sh.set_input(add, slot, (old.astype(np.float64) + bias.reshape(old.shape)).astype(old.dtype))
        else:
            sh.add_bias_after(node, (bias[m_out] if m_out is not None else bias).astype(b.dtype))


def _bias_add(y: gs.Tensor, n: int, sh) -> tuple[gs.Node | None, int]:
    """The Add that adds a constant per-column bias to ``y`` as its only use, and that bias's slot."""
    if len(y.outputs) != 1 or y.outputs[0].op != "Add" or len(y.outputs[0].inputs) != 2:
        return None, -1
    add = y.outputs[0]
    slot = 1 if add.inputs[0] is y else 0
    if add.inputs[1 - slot] is not y:
        return None, -1
    value = const_array(add.inputs[slot])
    if value is None or value.dtype.kind != "f" or value.size != n or value.shape[-1:] != (n,):
        return None, -1
    return add, slot


# ---------------------------------------------------------------------------------------------
# per-channel normalisations


class BatchNormRule(OneInputRule):
    """Inference BatchNormalization: parameters are cut with the channel; scale 0 maps any input
    to the shift (network slimming's zero channels)."""

    def analyze_tracked(self, node, env, tx):
        if tx.axis != 1 or int(_attr(node, "training_mode", 0)) or int(_attr(node, "spatial", 1)) != 1:
            return None
        if any(_uses(o) for o in node.outputs[1:]):
            return None
        params = [env.const(_input(node, k)) for k in range(1, 5)]
        if any(p is None or p.shape != (tx.size,) for p in params):
            return None
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        eps = float(_attr(node, "epsilon", 1e-5))
        with np.errstate(all="ignore"):
            out = (tx.values - mean) * scale / np.sqrt(var + eps) + shift
        out = np.where(scale == 0, shift, out)
        return Effect(outputs={0: _same(tx, _finite(out))}, handled={0},
                      scales=[(tx.atoms, np.abs(scale))], plan={"params": (1, 2, 3, 4)})

    def shrink(self, node, plan, sh):
        m = sh.keep(node.inputs[0])
        if m is None:
            return
        for slot in plan["params"]:
            sh.set_input(node, slot, sh.const(node.inputs[slot])[m])


class InstanceNormRule(OneInputRule):
    """InstanceNormalization: scale and B are cut with the channel. A zero channel normalises to
    B exactly; any other constant channel is left unknown (its mean is not bit-exact)."""

    def analyze_tracked(self, node, env, tx):
        params = [env.const(_input(node, k)) for k in (1, 2)]
        if tx.axis != 1 or any(p is None or p.shape != (tx.size,) for p in params):
            return None
        scale, shift = (p.astype(np.float64) for p in params)
        out = np.where((tx.values == 0) | (scale == 0), shift, NAN)
        return Effect(outputs={0: _same(tx, _finite(out))}, handled={0},
                      scales=[(tx.atoms, np.abs(scale))], plan={"params": (1, 2)})

    shrink = BatchNormRule.shrink


# ---------------------------------------------------------------------------------------------
# elementwise


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda t: math.erf(t) if np.isfinite(t) else NAN, otypes=[np.float64])(x) if x.size else x


def _softplus(x):
    return np.logaddexp(0.0, x)


def _unary_fn(node: gs.Node):
    """numpy version of an elementwise op on float64 channel constants, or None."""
    a = lambda name, d: float(_attr(node, name, d))  # noqa: E731
    op = node.op
    if op == "Relu":
        return lambda x: np.maximum(x, 0.0)
    if op == "LeakyRelu":
        alpha = a("alpha", 0.01)
        return lambda x: np.where(x < 0, alpha * x, x)
    if op == "Elu":
        alpha = a("alpha", 1.0)
        return lambda x: np.where(x < 0, alpha * np.expm1(x), x)
    if op == "Celu":
        alpha = a("alpha", 1.0)
        return lambda x: np.maximum(0.0, x) + np.minimum(0.0, alpha * np.expm1(x / alpha))
    if op == "Selu":
        alpha, gamma = a("alpha", 1.67326319217681884765625), a("gamma", 1.05070102214813232421875)
        return lambda x: gamma * np.where(x <= 0, alpha * np.expm1(x), x)
    if op == "ThresholdedRelu":
        alpha = a("alpha", 1.0)
        return lambda x: np.where(x > alpha, x, 0.0)
    if op == "Sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    if op == "HardSigmoid":
        alpha, beta = a("alpha", 0.2), a("beta", 0.5)
        return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)
    if op == "HardSwish":
        return lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if op == "Softplus":
        return _softplus
    if op == "Softsign":
        return lambda x: x / (1.0 + np.abs(x))
    if op == "Mish":
        return lambda x: x * np.tanh(_softplus(x))
    if op == "Gelu":
        if str(_attr(node, "approximate", "none")) in ("tanh", "b'tanh'"):
            return lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        return lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    if op == "Erf":
        return _erf
    table = {"Tanh": np.tanh, "Exp": np.exp, "Log": np.log, "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt,
             "Reciprocal": lambda x: 1.0 / x, "Floor": np.floor, "Ceil": np.ceil, "Round": np.round,
             "Sign": np.sign, "Sin": np.sin, "Cos": np.cos, "Identity": lambda x: x}
    return table.get(op)


class UnaryRule(OneInputRule):
    """Elementwise op of one tensor: same channels, values mapped through the op."""

    def analyze_tracked(self, node, env, tx):
        if len([o for o in node.outputs if _uses(o)]) > 1 or len(node.inputs) > 1:
            return None
        fn = _unary_fn(node)
        with np.errstate(all="ignore"):
            values = fn(tx.values) if fn is not None else np.full(tx.size, NAN)
        return Effect(outputs={0: _same(tx, _finite(values))}, handled={0})


class DropoutRule(OneInputRule):
    """Inference Dropout is the identity; a used mask or a non-constant training flag blocks."""

    def analyze_tracked(self, node, env, tx):
        if any(_uses(o) for o in node.outputs[1:]):
            return None
        flag = _input(node, 2)
        if flag is not None:
            value = env.const(flag)
            if value is None or bool(np.asarray(value).reshape(-1)[0]):
                return None
        if env.opset < 7 and not int(_attr(node, "is_test", 0)):  # drops at inference: only zeros stay
            return Effect(outputs={0: _same(tx, np.where(tx.values == 0, 0.0, NAN))}, handled={0})
        return Effect(outputs={0: _same(tx)}, handled={0})


class ClipRule(OneInputRule):
    """Clip with constant bounds (attributes before opset 11, inputs after)."""

    def analyze_tracked(self, node, env, tx):
        lo, hi = -np.inf, np.inf
        if "min" in node.attrs or "max" in node.attrs:
            lo, hi = float(_attr(node, "min", -np.inf)), float(_attr(node, "max", np.inf))
        for slot in (1, 2):
            t = _input(node, slot)
            if t is None:
                continue
            value = env.const(t)
            if value is None or value.size != 1:
                return None
            if slot == 1:
                lo = float(value.reshape(-1)[0])
            else:
                hi = float(value.reshape(-1)[0])
        with np.errstate(all="ignore"):
            values = np.minimum(np.maximum(tx.values, lo), hi)
        return Effect(outputs={0: _same(tx, _finite(values))}, handled={0})


class CastRule(OneInputRule):
    """Cast: the same channels; constants go through the target type and back."""

    def analyze_tracked(self, node, env, tx):
        import onnx

        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(int(_attr(node, "to")))
        except Exception:  # noqa: BLE001 - strings, exotic types
            return None
        if np.dtype(dtype).kind not in "fiub":
            return None
        with np.errstate(all="ignore"):
            finite = np.isfinite(tx.values)
            values = np.full(tx.size, NAN)
            values[finite] = tx.values[finite].astype(dtype).astype(np.float64)
        return Effect(outputs={0: _same(tx, _finite(values))}, handled={0})


_BINARY = {
    "Add": lambda xs: xs[0] + xs[1], "Sub": lambda xs: xs[0] - xs[1], "Mul": lambda xs: xs[0] * xs[1],
    "Div": lambda xs: xs[0] / xs[1], "Pow": lambda xs: np.power(xs[0], xs[1]),
    "Max": lambda xs: np.maximum.reduce(xs), "Min": lambda xs: np.minimum.reduce(xs),
    "Sum": lambda xs: np.add.reduce(xs), "Mean": lambda xs: np.add.reduce(xs) / len(xs),
    "PRelu": lambda xs: np.where(xs[0] < 0, xs[0] * xs[1], xs[0]),
}


class BroadcastRule(Rule):
    """Elementwise ops over several inputs with numpy broadcasting (Add, Mul, Max, PRelu, ...).

    Inputs that carry channels on the same (right-aligned) axis are tied channel by channel
    (residual Add, SE Mul). A constant with the full channel size there is cut with the channel;
    one of size 1 broadcasts. A non-constant untracked input with the full size blocks.
    """

    def analyze(self, node, env):
        inputs = [t for t in node.inputs]
        tracks = [env.track(t) if not is_empty(t) else None for t in inputs]
        if not any(tracks):
            return Effect()
        if len([o for o in node.outputs if _uses(o)]) > 1 or any(is_empty(t) for t in inputs):
            return None
        shapes = [env.shape(t) for t in inputs]
        if any(s is None for s in shapes):
            return None
        rank = max(len(s) for s in shapes)
        if node.op == "PRelu" and len(shapes[1]) > len(shapes[0]):
            return None
        out_axis = {tr.axis + rank - tr.rank for tr in tracks if tr is not None}
        sizes = {tr.size for tr in tracks if tr is not None}
        if len(out_axis) != 1 or len(sizes) != 1 or any(tr is not None and tr.rank != len(s)
                                                          for tr, s in zip(tracks, shapes)):
            return None
        axis, c = out_axis.pop(), sizes.pop()
        first = next(tr for tr in tracks if tr is not None)
        operands, sliced, unions = [], [], []
        for slot, (t, tr, s) in enumerate(zip(inputs, tracks, shapes)):
            a = axis - (rank - len(s))
            dim = s[a] if a >= 0 else 1
            if tr is not None:
                operands.append(tr.values)
                unions.append((first.atoms, tr.atoms))
                continue
            value = env.const(t)
            if dim == 1 and c != 1 or a < 0:
                operands.append(np.full(c, _uniform(value)) if value is not None else np.full(c, NAN))
            elif dim == c and value is not None:
                operands.append(_per_channel(value, a))
                if c > 1:
                    sliced.append((slot, a))
            else:
                return None
        values = _combine(node.op, operands)
        out = Track(axis, rank, first.atoms, _finite(values))
        return Effect(outputs={0: out}, handled={k for k, tr in enumerate(tracks) if tr is not None},
                      unions=unions, plan={"sliced": sliced})

    def shrink(self, node, plan, sh):
        m = sh.keep(node.outputs[0])
        if m is None:
            return
        for slot, a in plan["sliced"]:
            sh.set_input(node, slot, np.compress(m, sh.const(node.inputs[slot]), axis=a))


def _uniform(value: np.ndarray) -> float:
    flat = np.asarray(value, dtype=np.float64).reshape(-1) if value.dtype.kind in "fiub" else None
    if flat is None or flat.size == 0 or not np.all(flat == flat[0]):
        return NAN
    return float(flat[0])


def _per_channel(value: np.ndarray, axis: int) -> np.ndarray:
    """Per position along ``axis``: the constant's value if uniform over its other axes."""
    if value.dtype.kind not in "fiub":
        return np.full(value.shape[axis], NAN)
    moved = np.moveaxis(np.asarray(value, dtype=np.float64), axis, 0).reshape(value.shape[axis], -1)
    uniform = (moved == moved[:, :1]).all(axis=1) if moved.shape[1] else np.ones(moved.shape[0], bool)
    return np.where(uniform, moved[:, 0] if moved.shape[1] else NAN, NAN)


def _combine(op: str, operands: list[np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"):
        values = _BINARY[op](operands)
    if op == "Mul":  # zero times anything finite is zero, whether or not we know the other side
        values = np.where(np.any([o == 0 for o in operands], axis=0), 0.0, values)
    return values


# ---------------------------------------------------------------------------------------------
# layout: concat, split, slice, flatten, reshape, transpose, (un)squeeze


class ConcatRule(Rule):
    """Concat on the channel axis lays channel lists side by side (untracked parts get fresh,
    blocked atoms); on another axis it ties the inputs' channels like an elementwise op."""

    def analyze(self, node, env):
        tracks = [env.track(t) for t in node.inputs]
        if not any(tracks):
            return Effect()
        shapes = [env.shape(t) for t in node.inputs]
        if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
            return None
        rank = len(shapes[0])
        axis = _norm_axis(_attr(node, "axis", 0), rank)
        taxes = {tr.axis for tr in tracks if tr is not None}
        if axis is None or len(taxes) != 1 or any(tr is not None and tr.rank != rank for tr in tracks):
            return None
        taxis = taxes.pop()
        if taxis == axis:
            atoms, values, blocks = [], [], []
            for tr, s in zip(tracks, shapes):
                if tr is not None:
                    atoms.append(tr.atoms)
                    values.append(tr.values)
                elif s[axis] is None:
                    return None
                else:
                    fresh = env.fresh(s[axis])
                    atoms.append(fresh)
                    values.append(np.full(s[axis], NAN))
                    blocks.append(fresh)
            return Effect(outputs={0: Track(axis, rank, np.concatenate(atoms), np.concatenate(values))},
                          handled={k for k, tr in enumerate(tracks) if tr is not None}, blocks=blocks)
        first = next(tr for tr in tracks if tr is not None)
        sliced, unions = [], []
        same = np.ones(first.size, bool)
        for slot, (t, tr, s) in enumerate(zip(node.inputs, tracks, shapes)):
            if tr is not None:
                if tr.size != first.size:
                    return None
                unions.append((first.atoms, tr.atoms))
                same &= tr.values == first.values
            elif s[taxis] == first.size and env.const(t) is not None:
                sliced.append((slot, taxis))
                same &= False
            else:
                return None
        values = np.where(same, first.values, NAN)
        return Effect(outputs={0: Track(taxis, rank, first.atoms, values)},
                      handled={k for k, tr in enumerate(tracks) if tr is not None}, unions=unions,
                      plan={"sliced": sliced})

    def shrink(self, node, plan, sh):
        m = sh.keep(node.outputs[0])
        if m is None:
            return
        for slot, a in plan.get("sliced", ()):
            sh.set_input(node, slot, np.compress(m, sh.const(node.inputs[slot]), axis=a))


class SplitRule(Rule):
    """Split on the channel axis hands each output its slice of the channel list (the sizes
    are rewritten); on another axis every output keeps all channels."""

    def analyze(self, node, env):
        x = node.inputs[0]
        tx = env.track(x)
        if tx is None:
            return Effect()
        axis = _norm_axis(_attr(node, "axis", 0), tx.rank)
        if axis is None:
            return None
        n_out = len(node.outputs)
        if axis != tx.axis:
            return Effect(outputs={k: _same(tx) for k in range(n_out)}, handled={0})
        if "split" in node.attrs:
            sizes = [int(s) for s in node.attrs["split"]]
        elif _input(node, 1) is not None:
            value = env.const(node.inputs[1])
            if value is None:
                return None
            sizes = [int(s) for s in value.reshape(-1)]
        else:
            if tx.size % n_out:
                return None
            sizes = [tx.size // n_out] * n_out
        if len(sizes) != n_out or sum(sizes) != tx.size or min(sizes) < 1:
            return None
        bounds = np.cumsum([0] + sizes)
        outputs = {k: Track(tx.axis, tx.rank, tx.atoms[bounds[k]:bounds[k + 1]], tx.values[bounds[k]:bounds[k + 1]])
                   for k in range(n_out)}
        return Effect(outputs=outputs, handled={0}, plan={"bounds": bounds})

    def shrink(self, node, plan, sh):
        m = sh.keep(node.inputs[0])
        if m is None or "bounds" not in plan:
            return
        b = plan["bounds"]
        sizes = [int(m[b[k]:b[k + 1]].sum()) for k in range(len(b) - 1)]
        node.attrs.pop("num_outputs", None)
        if "split" in node.attrs or sh.opset < 13:
            sh.set_attr(node, "split", sizes)
        elif _input(node, 1) is not None:
            sh.set_input(node, 1, np.asarray(sizes, dtype=np.int64))
        else:
            sh.add_input(node, 1, np.asarray(sizes, dtype=np.int64), "split")


class SliceRule(Rule):
    """Slice with constant bounds: on the channel axis (step 1) the output holds a contiguous
    range of the input's channels, and the bounds are rewritten; other axes pass through."""

    def analyze(self, node, env):
        x = node.inputs[0]
        tx = env.track(x)
        if tx is None:
            return Effect()
        params = _slice_params(node, env)
        if params is None:
            return None
        starts, ends, axes, steps = params
        axes = [_norm_axis(a, tx.rank) for a in axes]
        if any(a is None for a in axes):
            return None
        if tx.axis not in axes:
            return Effect(outputs={0: _same(tx)}, handled={0}, plan={})
        k = axes.index(tx.axis)
        if steps[k] != 1:
            return None
        c = tx.size
        s, e = (int(v) for v in (starts[k], ends[k]))
        s = min(max(s + c if s < 0 else s, 0), c)
        e = min(max(e + c if e < 0 else e, 0), c)
        if e <= s:
            return None
        return Effect(outputs={0: Track(tx.axis, tx.rank, tx.atoms[s:e], tx.values[s:e])}, handled={0},
                      plan={"k": k, "range": (s, e)})

    def shrink(self, node, plan, sh):
        m = sh.keep(node.inputs[0])
        if m is None or "k" not in plan:
            return
        k, (s, e) = plan["k"], plan["range"]
        new_s = int(m[:s].sum())
        new_e = new_s + int(m[s:e].sum())
        if "starts" in node.attrs:
            starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
            starts[k], ends[k] = new_s, new_e
            sh.set_attr(node, "starts", starts)
            sh.set_attr(node, "ends", ends)
            return
        for slot, value in ((1, new_s), (2, new_e)):
            arr = np.array(sh.const(node.inputs[slot]), copy=True)
            arr[k] = value
            sh.set_input(node, slot, arr)


def _slice_params(node, env):
    if "starts" in node.attrs:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        return starts, ends, axes, [1] * len(starts)
    vals = [env.const(_input(node, k)) if _input(node, k) is not None else None for k in range(1, 5)]
    if vals[0] is None or vals[1] is None or (_input(node, 3) is not None and vals[2] is None) \
            or (_input(node, 4) is not None and vals[3] is None):
        return None
    starts, ends = vals[0].reshape(-1).tolist(), vals[1].reshape(-1).tolist()
    axes = vals[2].reshape(-1).tolist() if vals[2] is not None else list(range(len(starts)))
    steps = vals[3].reshape(-1).tolist() if vals[3] is not None else [1] * len(starts)
    return starts, ends, axes, steps


class PoolRule(Rule):
    """Pooling works per channel on axis 1. Max and global pools keep a constant channel
    constant; an average pool that counts zero padding keeps only zero channels exact."""

    def analyze(self, node, env):
        x = node.inputs[0]
        tx = env.track(x)
        if tx is None:
            return Effect()
        if tx.axis != 1 or any(_uses(o) for o in node.outputs[1:]):
            return None
        v = tx.values
        if node.op == "AveragePool" and int(_attr(node, "count_include_pad", 0)) and not _no_spatial_padding(node):
            v = np.where(v == 0, 0.0, NAN)
        elif node.op in ("LpPool", "GlobalLpPool"):
            v = np.where(v == 0, 0.0, NAN)
        return Effect(outputs={0: _same(tx, v)}, handled={0})


class ResizeRule(Rule):
    """Resize/Upsample that leave the channel axis alone (scale 1, or size equal to the count,
    which is rewritten). Nearest and linear keep constants; cubic keeps only zeros."""

    def analyze(self, node, env):
        x = node.inputs[0]
        tx = env.track(x)
        if tx is None:
            return Effect()
        handled = {0}
        mode = _attr(node, "mode", "nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ctm = _attr(node, "coordinate_transformation_mode", "")
        if (ctm.decode() if isinstance(ctm, bytes) else ctm) == "tf_crop_and_resize":
            return None
        axes = _attr(node, "axes", None)
        axes = [_norm_axis(a, tx.rank) for a in axes] if axes is not None else list(range(tx.rank))
        if tx.axis not in axes:
            return Effect(outputs={0: _same(tx)}, handled=handled)
        policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
        if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
            return None  # the policy rescales every listed axis, the channel axis included
        pos = axes.index(tx.axis)
        plan = {}
        if "scales" in node.attrs:
            scales = list(node.attrs["scales"])
            if float(scales[pos]) != 1.0:
                return None
        else:
            scale_slot = 1 if node.op == "Upsample" or len(node.inputs) == 2 else 2
            scales_t, sizes_t = _input(node, scale_slot), _input(node, 3) if scale_slot == 2 else None
            if sizes_t is not None:
                sizes = env.const(sizes_t)
                if sizes is None or int(sizes.reshape(-1)[pos]) != tx.size:
                    return None
                plan = {"sizes": (3, pos)}
            elif scales_t is not None:
                scales = env.const(scales_t)
                if scales is None or scales.size <= pos or float(scales.reshape(-1)[pos]) != 1.0:
                    return None
            else:
                return None
        v = tx.values if mode in ("nearest", "linear", "bilinear") else np.where(tx.values == 0, 0.0, NAN)
        return Effect(outputs={0: _same(tx, v)}, handled=handled, plan=plan)

    def shrink(self, node, plan, sh):
        m = sh.keep(node.inputs[0])
        if m is None or "sizes" not in plan:
            return
        slot, pos = plan["sizes"]
        sizes = np.array(sh.const(node.inputs[slot]), copy=True)
        sizes[pos] = int(m.sum())
        sh.set_input(node, slot, sizes)


class PadRule(Rule):
    """Pad with constant pads that leave the channel axis alone. Edge/reflect keep a constant
    channel constant; constant mode keeps it only when it equals the pad value."""

    def analyze(self, node, env):
        x = node.inputs[0]
        tx = env.track(x)
        if tx is None:
            return Effect()
        if "pads" in node.attrs:
            pads = [int(p) for p in node.attrs["pads"]]
            value = float(_attr(node, "value", 0.0))
            axes = list(range(tx.rank))
        else:
            p = env.const(_input(node, 1))
            if p is None:
                return None
            pads = [int(v) for v in p.reshape(-1)]
            value_t = _input(node, 2)
            value = 0.0
            if value_t is not None:
                cv = env.const(value_t)
                if cv is None or cv.size != 1:
                    return None
                value = float(cv.reshape(-1)[0])
            axes_t = _input(node, 3)
            if axes_t is not None:
                av = env.const(axes_t)
                if av is None:
                    return None
                axes = [_norm_axis(a, tx.rank) for a in av.reshape(-1)]
            else:
                axes = list(range(tx.rank))
        if None in axes or len(pads) != 2 * len(axes):
            return None
        n = len(axes)
        if tx.axis in axes:
            k = axes.index(tx.axis)
            if pads[k] != 0 or pads[k + n] != 0:
                return None
        mode = _attr(node, "mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        v = tx.values
        if mode == "constant" and any(pads):
            v = np.where(v == value, v, NAN)
        return Effect(outputs={0: _same(tx, v)}, handled={0})


class FlattenRule(Rule):
    """Flatten: a channel becomes a block of positions in the flat axis (each channel repeated
    over the dims after it), so a following Gemm drops whole blocks of rows."""

    def analyze(self, node, env):
        x = node.inputs[0]
        tx = env.track(x)
        if tx is None:
            return Effect()
        shape = env.shape(x)
        k = int(_attr(node, "axis", 1))
        k = k + tx.rank if k < 0 else k
        if shape is None or len(shape) != tx.rank or not 0 <= k <= tx.rank or tx.axis < k:
            return None
        dims = shape[k:]
        if any(d is None for d in dims):
            return None
        return _flattened(tx, shape, k)


def _flattened(tx: Track, shape: list, k: int) -> Effect:
    inner = int(np.prod(shape[tx.axis + 1:], dtype=np.int64))
    outer = int(np.prod(shape[k:tx.axis], dtype=np.int64))
    atoms = np.tile(np.repeat(tx.atoms, inner), outer)
    values = np.tile(np.repeat(tx.values, inner), outer)
    return Effect(outputs={0: Track(1, 2, atoms, values)}, handled={0})  # the channel lands in axis 1


class ReshapeRule(Rule):
    """Reshape that keeps every axis after the first ([N, C, H, W] -> [N, C, H, W]) or flattens
    everything after the first ([N, C, H, W] -> [N, C*H*W]); an explicit channel or flat size in
    the shape constant is rewritten. Any other reshape (e.g. splitting heads) blocks."""

    def analyze(self, node, env):
        x = node.inputs[0]
        tx = env.track(x)
        if tx is None:
            return Effect()
        in_shape, target = env.shape(x), env.const(_input(node, 1))
        if in_shape is None or target is None or target.ndim != 1 or int(_attr(node, "allowzero", 0)) \
                or tx.axis < 1 or len(in_shape) != tx.rank or any(d is None for d in in_shape[1:]):
            return None
        target = [int(v) for v in target]
        batch_ok = target[0] in (0, -1) or (in_shape[0] is not None and target[0] == in_shape[0])
        if not batch_ok:
            return None
        if len(target) == tx.rank and all(t in (0, d) or (t == -1 and target[0] != -1)
                                          for t, d in zip(target[1:], in_shape[1:])) \
                and target.count(-1) <= 1:
            explicit = target[tx.axis] not in (0, -1)
            return Effect(outputs={0: _same(tx)}, handled={0}, plan={"slot": tx.axis} if explicit else {})
        flat = int(np.prod(in_shape[1:], dtype=np.int64))
        if len(target) == 2 and target[1] in (-1, flat) and target.count(-1) <= 1:
            effect = _flattened(tx, in_shape, 1)
            effect.plan = {"slot": 1} if target[1] != -1 else {}
            return effect
        return None

    def shrink(self, node, plan, sh):
        m = sh.keep(node.outputs[0])
        if m is None or "slot" not in plan:
            return
        target = np.array(sh.const(node.inputs[1]), copy=True)
        target[plan["slot"]] = int(m.sum())
        sh.set_input(node, 1, target)


class TransposeRule(Rule):
    """Transpose moves the channel axis to where the permutation sends it."""

    def analyze(self, node, env):
        tx = env.track(node.inputs[0])
        if tx is None:
            return Effect()
        perm = _attr(node, "perm", None)
        perm = list(perm) if perm is not None else list(range(tx.rank))[::-1]
        if sorted(perm) != list(range(tx.rank)):
            return None
        return Effect(outputs={0: Track(perm.index(tx.axis), tx.rank, tx.atoms, tx.values)}, handled={0})


def _explicit_axes(node: gs.Node, env) -> list[int] | None:
    """Axes from the attribute (older opsets) or a constant second input; None when unknown."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    value = env.const(_input(node, 1))
    return None if value is None else value.reshape(-1).tolist()


class SqueezeRule(Rule):
    """Squeeze/Unsqueeze with explicit axes shift the channel axis (squeezing it blocks)."""

    def analyze(self, node, env):
        tx = env.track(node.inputs[0])
        if tx is None:
            return Effect()
        axes = _explicit_axes(node, env)
        if axes is None:
            return None
        if node.op == "Squeeze":
            axes = [_norm_axis(a, tx.rank) for a in axes]
            if None in axes or tx.axis in axes or not axes:
                return None
            return Effect(outputs={0: Track(tx.axis - sum(a < tx.axis for a in axes), tx.rank - len(axes),
                                            tx.atoms, tx.values)}, handled={0})
        rank = tx.rank + len(axes)
        axes = [_norm_axis(a, rank) for a in axes]
        if None in axes:
            return None
        kept = [k for k in range(rank) if k not in axes]
        return Effect(outputs={0: Track(kept[tx.axis], rank, tx.atoms, tx.values)}, handled={0})


_REDUCE_KEEPS = {"ReduceMean", "ReduceMax", "ReduceMin"}
_REDUCE_ZERO = {"ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"}


class ReduceRule(Rule):
    """Reductions over axes other than the channel axis (explicit axes only)."""

    def analyze(self, node, env):
        tx = env.track(node.inputs[0])
        if tx is None:
            return Effect()
        axes = _explicit_axes(node, env)
        if axes is None:
            return None
        axes = [_norm_axis(a, tx.rank) for a in axes]
        if not axes or None in axes or tx.axis in axes:
            return None
        keep = int(_attr(node, "keepdims", 1))
        axis = tx.axis if keep else tx.axis - sum(a < tx.axis for a in axes)
        v = tx.values if node.op in _REDUCE_KEEPS else np.where(tx.values == 0, 0.0, NAN) \
            if node.op in _REDUCE_ZERO else np.full(tx.size, NAN)
        return Effect(outputs={0: Track(axis, tx.rank if keep else tx.rank - len(axes), tx.atoms, v)},
                      handled={0})


class SoftmaxRule(Rule):
    """Softmax-like ops normalising along an axis other than the channel axis."""

    def analyze(self, node, env):
        tx = env.track(node.inputs[0])
        if tx is None:
            return Effect()
        if env.opset >= 13:
            axis = _norm_axis(_attr(node, "axis", -1), tx.rank)
            if axis is None or axis == tx.axis:
                return None
        else:
            axis = _norm_axis(_attr(node, "axis", 1), tx.rank)
            if axis is None or tx.axis >= axis:
                return None
        return Effect(outputs={0: _same(tx, np.full(tx.size, NAN))}, handled={0})


def build_rules(border: bool = True) -> dict[str, Rule]:
    """Op type -> rule. Anything missing is not understood and blocks. ``border``: remove constant
    channels that meet a padded Conv too (see ConvRule)."""
    rules: dict[str, Rule] = {"Conv": ConvRule(border), "ConvTranspose": ConvTransposeRule(), "Gemm": GemmRule(),
                              "MatMul": MatMulRule(), "BatchNormalization": BatchNormRule(),
                              "InstanceNormalization": InstanceNormRule(), "Dropout": DropoutRule(),
                              "Clip": ClipRule(), "Cast": CastRule(), "Concat": ConcatRule(),
                              "Split": SplitRule(), "Slice": SliceRule(), "Flatten": FlattenRule(),
                              "Reshape": ReshapeRule(), "Transpose": TransposeRule(), "Pad": PadRule()}
    unary = UnaryRule()
    for op in ("Relu", "LeakyRelu", "Elu", "Celu", "Selu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
               "HardSwish", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Tanh", "Exp", "Log", "Neg", "Abs",
               "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity"):
        rules[op] = unary
    broadcast = BroadcastRule()
    for op in _BINARY:
        rules[op] = broadcast
    pool = PoolRule()
    for op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        rules[op] = pool
    resize = ResizeRule()
    rules["Resize"] = rules["Upsample"] = resize
    squeeze = SqueezeRule()
    rules["Squeeze"] = rules["Unsqueeze"] = squeeze
    reduce = ReduceRule()
    for op in _REDUCE_KEEPS | _REDUCE_ZERO | {"ReduceProd", "ReduceLogSum", "ReduceLogSumExp"}:
        rules[op] = reduce
    softmax = SoftmaxRule()
    for op in ("Softmax", "LogSoftmax", "Hardmax"):
        rules[op] = softmax
    return rules
