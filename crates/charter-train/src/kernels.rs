//! Fused CPU kernels for the row-wise and element-wise operations of a
//! training step.
//!
//! Outside the matrix products, a step on burn's `flex` backend is spent in
//! element-wise passes: autodiff builds a softmax from five tensor
//! operations (max, subtract, exp, sum, divide), each a full pass over the
//! `[batch, heads, seq, seq]` attention scores that allocates a new tensor,
//! runs on one thread and is kept for the backward pass, which takes as
//! many again; the answer tokens' log-probabilities do the same over
//! `[answers, vocabulary]` logits, and RMSNorm and SwiGLU over every
//! block's activations. The kernels here do each in one parallel pass
//! forward and one backward:
//!
//! - [`causal_softmax`]: the softmax of scaled attention scores under a
//!   causal mask (row `i` sees keys `0..=i`);
//! - [`token_logp`]: `log softmax(logits)[target]` per row;
//! - [`rms_norm`]: `x / sqrt(mean(x²) + eps) · weight` per row;
//! - [`swiglu`]: `silu(gate) · up`;
//! - [`linear`]: `x · wᵀ`, burn's matrix product without its output copy
//!   (see [`crate::gemm`]), whose backward pass reads the weight and the
//!   gradients through their strides instead of making transposed copies.
//!
//! They are a burn backend extension implemented for `Flex` and for
//! `Autodiff<Flex>` (with hand-written backward passes). On any other
//! backend (wgpu) the functions compose the same result from burn's tensor
//! operations, so the model code calls them unconditionally; the tests
//! check each kernel and its gradients against that composition.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use rayon::prelude::*;
use std::borrow::Cow;

use crate::gemm::{self, Matrix};

/// The fused operations; see the module documentation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait Fused: Backend {
    /// `softmax(scale · scores)` over the last dimension of `[.., seq, seq]`
    /// scores, with key `j > i` masked out of row `i`.
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;

    /// `log softmax(logits)[r, targets[r]]` for `[rows, vocab]` logits, `[rows]`.
    fn token_logp(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;

    /// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · weight`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;

    /// The SwiGLU product `silu(gate) · up`, element-wise.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x · wᵀ` for `[rows, in]` inputs and an `[out, in]` weight.
    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl Fused for Flex {
    fn causal_softmax(scores: FlexTensor, scale: f32) -> FlexTensor {
        causal_softmax_forward(&scores, scale)
    }

    fn token_logp(logits: FlexTensor, targets: FlexTensor) -> FlexTensor {
        token_logp_forward(&logits, &targets)
    }

    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        rms_norm_forward(&x, &weight, eps)
    }

    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        swiglu_forward(&gate, &up)
    }

    fn linear(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        linear_forward(&x, &w)
    }
}

impl<C: CheckpointStrategy> Fused for Autodiff<Flex, C> {
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let probs = causal_softmax_forward(scores.primitive(), scale);
        record::<_, C, 1>(
            CausalSoftmax,
            [scores.node()],
            (probs.clone(), scale),
            probs,
        )
    }

    fn token_logp(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let x = logits.primitive().clone();
        let out = token_logp_forward(&x, &targets);
        record::<_, C, 1>(TokenLogp, [logits.node()], (x, targets), out)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let (xs, w) = (x.primitive().clone(), weight.primitive().clone());
        let out = rms_norm_forward(&xs, &w, eps);
        record::<_, C, 2>(RmsNorm, [x.node(), weight.node()], (xs, w, eps), out)
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (g, u) = (gate.primitive().clone(), up.primitive().clone());
        let out = swiglu_forward(&g, &u);
        record::<_, C, 2>(SwiGlu, [gate.node(), up.node()], (g, u), out)
    }

    fn linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (xs, ws) = (x.primitive().clone(), w.primitive().clone());
        let out = linear_forward(&xs, &ws);
        record::<_, C, 2>(Linear, [x.node(), w.node()], (xs, ws), out)
    }
}

/// Puts `output` of a fused operation on the autodiff graph with its
/// backward step `op` and the `state` that step needs (dropped at once when
/// no input requires a gradient).
fn record<Op, C, const N: usize>(
    op: Op,
    parents: [NodeGuard; N],
    state: Op::State,
    output: FlexTensor,
) -> FloatTensor<Autodiff<Flex, C>>
where
    Op: Backward<Flex, N>,
    C: CheckpointStrategy,
{
    match op.prepare::<C>(parents).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

#[derive(Debug)]
struct CausalSoftmax;

impl Backward<Flex, 1> for CausalSoftmax {
    /// The probabilities and the scale.
    type State = (FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (probs, scale) = ops.state;
        if let Some(node) = parent {
            grads.register::<Flex>(node.id, causal_softmax_backward(&probs, &grad, scale));
        }
    }
}

#[derive(Debug)]
struct TokenLogp;

impl Backward<Flex, 1> for TokenLogp {
    /// The logits and the targets.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (logits, targets) = ops.state;
        if let Some(node) = parent {
            grads.register::<Flex>(node.id, token_logp_backward(&logits, &targets, &grad));
        }
    }
}

#[derive(Debug)]
struct RmsNorm;

impl Backward<Flex, 2> for RmsNorm {
    /// The input, the weight and epsilon.
    type State = (FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, w, eps) = ops.state;
        let (dx, dw) = rms_norm_backward(&x, &w, eps, &grad, w_node.is_some());
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (w_node, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

#[derive(Debug)]
struct SwiGlu;

impl Backward<Flex, 2> for SwiGlu {
    /// Both inputs.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [gate_node, up_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (gate, up) = ops.state;
        let (d_gate, d_up) = swiglu_backward(&gate, &up, &grad);
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, d_gate);
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, d_up);
        }
    }
}

#[derive(Debug)]
struct Linear;

impl Backward<Flex, 2> for Linear {
    /// The input and the weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, w) = ops.state;
        let dy = matrix(&grad);
        if let Some(node) = x_node {
            // dx = dy · w
            let dx = gemm::matmul(&dy, &matrix(&w));
            grads.register::<Flex>(node.id, tensor(dx, dims(&x)));
        }
        if let Some(node) = w_node {
            // dw = dyᵀ · x, in the weight's own [out, in] layout.
            let dw = gemm::matmul(&dy.t(), &matrix(&x));
            grads.register::<Flex>(node.id, tensor(dw, dims(&w)));
        }
    }
}

/// Whether the fused kernels apply to `t`: an f32 tensor on flex (with or
/// without autodiff).
pub(crate) fn fused<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// `softmax(scale · scores)` of `[batch, heads, seq, seq]` scores under a
/// causal mask (`masked` is true above the diagonal, for the composed
/// fallback off flex).
pub(crate) fn causal_softmax(scores: Tensor<4>, scale: f64, masked: &Tensor<4, Bool>) -> Tensor<4> {
    if fused(&scores) {
        let out = <Dispatch as Fused>::causal_softmax(scores.into_dispatch(), scale as f32);
        return Tensor::from_dispatch(out);
    }
    composed_causal_softmax(scores, scale, masked)
}

fn composed_causal_softmax(scores: Tensor<4>, scale: f64, masked: &Tensor<4, Bool>) -> Tensor<4> {
    softmax(
        (scores * scale).mask_fill(masked.clone(), f32::NEG_INFINITY),
        3,
    )
}

/// `log softmax(logits)[r, targets[r]]`, `[rows]`, for `[rows, vocab]` logits.
pub(crate) fn token_logp(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    if fused(&logits) {
        let out = <Dispatch as Fused>::token_logp(logits.into_dispatch(), targets.into_dispatch());
        return Tensor::from_dispatch(out);
    }
    composed_token_logp(logits, targets)
}

fn composed_token_logp(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let n = targets.dims()[0];
    log_softmax(logits, 1)
        .gather(1, targets.reshape([n, 1]))
        .reshape([n])
}

/// RMSNorm of `x` `[batch, seq, hidden]` over its last dimension, scaled
/// by `weight` `[hidden]`.
pub(crate) fn rms_norm(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    if fused(&x) {
        let out = <Dispatch as Fused>::rms_norm(x.into_dispatch(), weight.into_dispatch(), eps);
        return Tensor::from_dispatch(out);
    }
    composed_rms_norm(x, weight, eps)
}

fn composed_rms_norm(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    let ms = x.clone().powi_scalar(2).mean_dim(2);
    x / (ms + eps).sqrt() * weight.unsqueeze::<3>()
}

/// `silu(gate) · up`, element-wise.
pub(crate) fn swiglu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    if fused(&gate) && gate.dims() == up.dims() {
        let out = <Dispatch as Fused>::swiglu(gate.into_dispatch(), up.into_dispatch());
        return Tensor::from_dispatch(out);
    }
    composed_swiglu(gate, up)
}

fn composed_swiglu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    silu(gate) * up
}

/// `x · wᵀ`, `[rows, out]`, for `x` `[rows, in]` and `w` `[out, in]`.
pub(crate) fn linear(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    if fused(&x) && fused(&w) && x.dims()[1] == w.dims()[1] {
        let out = <Dispatch as Fused>::linear(x.into_dispatch(), w.into_dispatch());
        return Tensor::from_dispatch(out);
    }
    composed_linear(x, w)
}

fn composed_linear(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    x.matmul(w.transpose())
}

/// A contiguous f32 view of `t`'s values (copied only if `t` is a strided view).
fn f32_values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(values) => Cow::Borrowed(values),
        None => Cow::Owned(
            t.to_contiguous()
                .into_data()
                .try_to_vec::<f32>()
                .expect("a contiguous f32 tensor converts to f32 values"),
        ),
    }
}

/// Integer targets as indices (flex stores int tensors as i64 or i32).
fn indices(t: &FlexTensor) -> Vec<usize> {
    let t = t.to_contiguous();
    match t.dtype() {
        DType::I64 => t
            .as_slice::<i64>()
            .map(|v| v.iter().map(|&x| x as usize).collect()),
        DType::I32 => t
            .as_slice::<i32>()
            .map(|v| v.iter().map(|&x| x as usize).collect()),
        other => panic!("token_logp: targets of dtype {other:?}"),
    }
    .expect("a contiguous tensor has a slice")
}

/// `t`'s shape.
fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A 2-D f32 tensor as a matrix-product operand, read through its strides
/// (copied only when a stride is negative).
fn matrix(t: &FlexTensor) -> Matrix<'_> {
    let shape = dims(t);
    let [rows, cols] = shape[..] else {
        panic!("linear: a {}-D operand", shape.len())
    };
    match t.layout().strides() {
        &[r, c] if r >= 0 && c >= 0 => Matrix {
            values: Cow::Borrowed(t.storage::<f32>()),
            offset: t.layout().start_offset(),
            rows,
            cols,
            row_stride: r.unsigned_abs(),
            col_stride: c.unsigned_abs(),
        },
        _ => Matrix::row_major(f32_values(t), rows, cols),
    }
}

fn linear_forward(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let (x, w) = (matrix(x), matrix(w));
    let rows = x.rows;
    let out = w.rows;
    tensor(gemm::matmul(&x, &w.t()), vec![rows, out])
}

/// Rows handed to one rayon task (a row is one query position's scores).
const ROWS_PER_TASK: usize = 32;

fn causal_softmax_forward(scores: &FlexTensor, scale: f32) -> FlexTensor {
    let shape = dims(scores);
    let t = *shape.last().unwrap_or(&1);
    let input = f32_values(scores);
    let mut out = vec![0f32; input.len()];
    out.par_chunks_mut(t * ROWS_PER_TASK)
        .zip(input.par_chunks(t * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (out, input))| {
            for (k, (o, x)) in out.chunks_mut(t).zip(input.chunks(t)).enumerate() {
                // Row index within its [seq, seq] matrix.
                let i = (task * ROWS_PER_TASK + k) % t;
                let (o, x) = (&mut o[..=i], &x[..=i]);
                let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
                let mut sum = 0f64;
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = (x * scale - max).exp();
                    sum += f64::from(*o);
                }
                let inv = (1.0 / sum) as f32;
                o.iter_mut().for_each(|o| *o *= inv);
            }
        });
    tensor(out, shape)
}

/// `dS = scale · P ⊙ (dP − rowsum(P ⊙ dP))` (zero where masked, since P is).
fn causal_softmax_backward(probs: &FlexTensor, grad: &FlexTensor, scale: f32) -> FlexTensor {
    let shape = dims(probs);
    let t = *shape.last().unwrap_or(&1);
    let (p, g) = (f32_values(probs), f32_values(grad));
    let mut out = vec![0f32; p.len()];
    out.par_chunks_mut(t * ROWS_PER_TASK)
        .zip(
            p.par_chunks(t * ROWS_PER_TASK)
                .zip(g.par_chunks(t * ROWS_PER_TASK)),
        )
        .enumerate()
        .for_each(|(task, (out, (p, g)))| {
            for (k, ((o, p), g)) in out
                .chunks_mut(t)
                .zip(p.chunks(t))
                .zip(g.chunks(t))
                .enumerate()
            {
                let i = (task * ROWS_PER_TASK + k) % t;
                let (o, p, g) = (&mut o[..=i], &p[..=i], &g[..=i]);
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                    *o = scale * p * (g - dot);
                }
            }
        });
    tensor(out, shape)
}

/// Row maximum and `ln Σ exp(x − max)` accumulated in f64.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
    max + sum.ln() as f32
}

fn token_logp_forward(logits: &FlexTensor, targets: &FlexTensor) -> FlexTensor {
    let shape = logits.layout().shape();
    let (n, v) = (shape[0], shape[1]);
    let x = f32_values(logits);
    let targets = indices(targets);
    let out: Vec<f32> = x
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| row[t] - log_sum_exp(row))
        .collect();
    tensor(out, vec![n])
}

/// `d logits[r, j] = grad[r] · (1[j = target[r]] − softmax(logits[r])[j])`.
fn token_logp_backward(logits: &FlexTensor, targets: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let shape = dims(logits);
    let v = shape[1];
    let x = f32_values(logits);
    let g = f32_values(grad);
    let targets = indices(targets);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(v)
        .zip(x.par_chunks(v))
        .zip(targets.par_iter().zip(g.par_iter()))
        .for_each(|((o, row), (&t, &g))| {
            let lse = log_sum_exp(row);
            for (o, &x) in o.iter_mut().zip(row) {
                *o = -g * (x - lse).exp();
            }
            o[t] += g;
        });
    tensor(out, shape)
}

/// Rows of a RMSNorm handed to one rayon task.
const NORM_ROWS_PER_TASK: usize = 64;

/// `1 / sqrt(mean(x²) + eps)` of one row, accumulated in f64.
fn inv_rms(row: &[f32], eps: f64) -> f32 {
    let ms = row
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / row.len() as f64;
    (1.0 / (ms + eps).sqrt()) as f32
}

fn rms_norm_forward(x: &FlexTensor, weight: &FlexTensor, eps: f64) -> FlexTensor {
    let shape = dims(x);
    let h = *shape.last().unwrap_or(&1);
    let (x, w) = (f32_values(x), f32_values(weight));
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(h * NORM_ROWS_PER_TASK)
        .zip(x.par_chunks(h * NORM_ROWS_PER_TASK))
        .for_each(|(out, x)| {
            for (o, x) in out.chunks_mut(h).zip(x.chunks(h)) {
                let r = inv_rms(x, eps);
                for ((o, &x), &w) in o.iter_mut().zip(x).zip(w.iter()) {
                    *o = x * r * w;
                }
            }
        });
    tensor(out, shape)
}

/// `dx = r · (g⊙w − x̂ · mean(g⊙w⊙x̂))` with `x̂ = r·x`, and (when wanted)
/// `dw = Σ_rows g ⊙ x̂`.
fn rms_norm_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    eps: f64,
    grad: &FlexTensor,
    want_dw: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = dims(x);
    let h = *shape.last().unwrap_or(&1);
    let (x, w, g) = (f32_values(x), f32_values(weight), f32_values(grad));
    let mut dx = vec![0f32; x.len()];
    let dw = dx
        .par_chunks_mut(h * NORM_ROWS_PER_TASK)
        .zip(
            x.par_chunks(h * NORM_ROWS_PER_TASK)
                .zip(g.par_chunks(h * NORM_ROWS_PER_TASK)),
        )
        .map(|(dx, (x, g))| {
            let mut dw = if want_dw { vec![0f32; h] } else { Vec::new() };
            for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                let r = inv_rms(x, eps);
                let dot: f32 = x
                    .iter()
                    .zip(g)
                    .zip(w.iter())
                    .map(|((&x, &g), &w)| g * w * x * r)
                    .sum();
                let mean = dot / h as f32;
                for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w.iter()) {
                    *dx = r * (g * w - x * r * mean);
                }
                if want_dw {
                    for ((dw, &x), &g) in dw.iter_mut().zip(x).zip(g) {
                        *dw += g * x * r;
                    }
                }
            }
            dw
        })
        .reduce(Vec::new, |a, b| match (a.is_empty(), b.is_empty()) {
            (true, _) => b,
            (_, true) => a,
            _ => a.iter().zip(&b).map(|(a, b)| a + b).collect(),
        });
    let dw = want_dw.then(|| tensor(if dw.is_empty() { vec![0.0; h] } else { dw }, vec![h]));
    (tensor(dx, shape), dw)
}

/// Elements of a SwiGLU handed to one rayon task.
const ELEMENTS_PER_TASK: usize = 16 * 1024;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn swiglu_forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let shape = dims(gate);
    let (g, u) = (f32_values(gate), f32_values(up));
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(
            g.par_chunks(ELEMENTS_PER_TASK)
                .zip(u.par_chunks(ELEMENTS_PER_TASK)),
        )
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    tensor(out, shape)
}

/// `d gate = grad · up · σ(gate)·(1 + gate·(1 − σ(gate)))`, `d up = grad · silu(gate)`.
fn swiglu_backward(
    gate: &FlexTensor,
    up: &FlexTensor,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let shape = dims(gate);
    let (g, u, d) = (f32_values(gate), f32_values(up), f32_values(grad));
    let mut d_gate = vec![0f32; g.len()];
    let mut d_up = vec![0f32; g.len()];
    d_gate
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(d_up.par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(
            g.par_chunks(ELEMENTS_PER_TASK)
                .zip(u.par_chunks(ELEMENTS_PER_TASK)),
        )
        .zip(d.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(((dg, du), (g, u)), d)| {
            for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du).zip(g).zip(u).zip(d) {
                let s = sigmoid(g);
                *du = d * g * s;
                *dg = d * u * s * (1.0 + g * (1.0 - s));
            }
        });
    (tensor(d_gate, shape.clone()), tensor(d_up, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn device(autodiff: bool) -> Device {
        let device = Device::flex();
        if autodiff { device.autodiff() } else { device }
    }

    fn max_delta<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let a: Vec<f32> = a.into_data().try_to_vec().unwrap();
        let b: Vec<f32> = b.into_data().try_to_vec().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// The fused softmax and its gradient against burn's composed ops, on
    /// scores of a width not divisible by the task size.
    #[test]
    fn causal_softmax_matches_composed_ops() {
        let d = device(true);
        let (b, h, t) = (2, 3, 37);
        let masked = Tensor::<2, Bool>::tril_mask([t, t], 0, &d).unsqueeze::<4>();
        let scores = Tensor::<4>::random([b, h, t, t], Distribution::Normal(0.0, 3.0), &d);
        let weights = Tensor::<4>::random([b, h, t, t], Distribution::Normal(0.0, 1.0), &d);
        let run = |fused: bool| {
            let x = scores.clone().detach().require_grad();
            let p = match fused {
                true => causal_softmax(x.clone(), 0.125, &masked),
                false => composed_causal_softmax(x.clone(), 0.125, &masked),
            };
            let grads = (p.clone() * weights.clone()).sum().backward();
            (p.inner(), x.grad(&grads).unwrap())
        };
        let ((p, g), (p0, g0)) = (run(true), run(false));
        assert!(max_delta(p.clone(), p0) < 1e-6);
        assert!(max_delta(g, g0) < 1e-6);
        // Masked positions are exactly zero and every row sums to one.
        let values: Vec<f32> = p.clone().into_data().try_to_vec().unwrap();
        assert_eq!(values[1], 0.0);
        let sums: Vec<f32> = p.sum_dim(3).into_data().try_to_vec().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
    }

    /// The fused target log-probability and its gradient against
    /// `log_softmax` + `gather`.
    #[test]
    fn token_logp_matches_composed_ops() {
        let d = device(true);
        let (n, v) = (5, 1031);
        let logits = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 4.0), &d);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 7, 1030, 7, 512], [n]), &d);
        let weights = Tensor::<1>::from_floats([1.0, -0.5, 2.0, 0.25, 1.5], &d);
        let run = |fused: bool| {
            let x = logits.clone().detach().require_grad();
            let logp = match fused {
                true => token_logp(x.clone(), targets.clone()),
                false => composed_token_logp(x.clone(), targets.clone()),
            };
            let grads = (logp.clone() * weights.clone()).sum().backward();
            (logp.inner(), x.grad(&grads).unwrap())
        };
        let ((l, g), (l0, g0)) = (run(true), run(false));
        assert!(max_delta(l, l0) < 1e-5);
        assert!(max_delta(g, g0) < 1e-6);
    }

    /// RMSNorm and its input and weight gradients against the composed ops.
    #[test]
    fn rms_norm_matches_composed_ops() {
        let d = device(true);
        let (b, t, h) = (3, 50, 24);
        let x = Tensor::<3>::random([b, t, h], Distribution::Normal(0.5, 2.0), &d);
        let w = Tensor::<1>::random([h], Distribution::Normal(1.0, 0.3), &d);
        let weights = Tensor::<3>::random([b, t, h], Distribution::Normal(0.0, 1.0), &d);
        let run = |fused: bool| {
            let (x, w) = (
                x.clone().detach().require_grad(),
                w.clone().detach().require_grad(),
            );
            let y = match fused {
                true => rms_norm(x.clone(), w.clone(), 1e-5),
                false => composed_rms_norm(x.clone(), w.clone(), 1e-5),
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        let ((y, dx, dw), (y0, dx0, dw0)) = (run(true), run(false));
        assert!(max_delta(y, y0) < 1e-5);
        assert!(max_delta(dx, dx0) < 1e-5);
        assert!(max_delta(dw, dw0) < 1e-4);
        // A frozen weight (LoRA) gets no gradient; the input still does.
        let x = x.clone().detach().require_grad();
        let grads = rms_norm(x.clone(), w.clone().detach(), 1e-5)
            .sum()
            .backward();
        assert!(x.grad(&grads).is_some());
    }

    /// SwiGLU and both input gradients against `silu(gate) · up`.
    #[test]
    fn swiglu_matches_composed_ops() {
        let d = device(true);
        let shape = [2, 7, 4099];
        let gate = Tensor::<3>::random(shape, Distribution::Normal(0.0, 3.0), &d);
        let up = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &d);
        let weights = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &d);
        let run = |fused: bool| {
            let (g, u) = (
                gate.clone().detach().require_grad(),
                up.clone().detach().require_grad(),
            );
            let y = match fused {
                true => swiglu(g.clone(), u.clone()),
                false => composed_swiglu(g.clone(), u.clone()),
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.inner(), g.grad(&grads).unwrap(), u.grad(&grads).unwrap())
        };
        let ((y, dg, du), (y0, dg0, du0)) = (run(true), run(false));
        assert!(max_delta(y, y0) < 1e-5);
        assert!(max_delta(dg, dg0) < 1e-5);
        assert!(max_delta(du, du0) < 1e-5);
    }

    /// The fused linear layer and both gradients against `x · wᵀ`, with a
    /// transposed (strided) input, and with a frozen weight.
    #[test]
    fn linear_matches_composed_ops() {
        let d = device(true);
        let (n, i, o) = (300, 67, 211);
        let xt = Tensor::<2>::random([i, n], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<2>::random([o, i], Distribution::Normal(0.0, 0.5), &d);
        let weights = Tensor::<2>::random([n, o], Distribution::Normal(0.0, 1.0), &d);
        let run = |fused: bool| {
            let (xt, w) = (
                xt.clone().detach().require_grad(),
                w.clone().detach().require_grad(),
            );
            let x = xt.clone().transpose();
            let y = match fused {
                true => linear(x, w.clone()),
                false => composed_linear(x, w.clone()),
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            (y.inner(), xt.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        let ((y, dx, dw), (y0, dx0, dw0)) = (run(true), run(false));
        assert!(max_delta(y, y0) < 1e-4);
        assert!(max_delta(dx, dx0) < 1e-4);
        assert!(max_delta(dw, dw0) < 1e-3);
        // A frozen weight gets no gradient; the input still does.
        let x = xt.clone().transpose().detach().require_grad();
        let grads = linear(x.clone(), w.clone().detach()).sum().backward();
        assert!(x.grad(&grads).is_some());
        assert!(w.grad(&grads).is_none());
    }

    /// Without autodiff the kernels run on flex directly.
    #[test]
    fn kernels_run_without_autodiff() {
        let d = device(false);
        let masked = Tensor::<2, Bool>::tril_mask([4, 4], 0, &d).unsqueeze::<4>();
        let scores = Tensor::<4>::random([1, 2, 4, 4], Distribution::Normal(0.0, 1.0), &d);
        let fused = causal_softmax(scores.clone(), 0.5, &masked);
        assert!(max_delta(fused, composed_causal_softmax(scores, 0.5, &masked)) < 1e-6);
        let logits = Tensor::<2>::random([3, 11], Distribution::Normal(0.0, 1.0), &d);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 5, 10], [3]), &d);
        let fused = token_logp(logits.clone(), targets.clone());
        assert!(max_delta(fused, composed_token_logp(logits, targets)) < 1e-6);
        let x = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<2>::random([3, 7], Distribution::Normal(0.0, 1.0), &d);
        let fused = linear(x.clone(), w.clone());
        assert!(max_delta(fused, composed_linear(x, w)) < 1e-5);
    }
}
