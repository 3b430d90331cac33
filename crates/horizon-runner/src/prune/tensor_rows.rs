//! Small tensor helpers the pruning stages share.

use tch::{Kind, Tensor};

/// `rows` as an index tensor on `device` (for `index_select`).
pub(crate) fn index_tensor(rows: &[usize], device: tch::Device) -> Tensor {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_slice(&idx).to_device(device)
}

/// Rows `[n, D]` of `hidden` `[1, S, D]` at `rows`, as f32.
pub(crate) fn rows_f32(hidden: &Tensor, rows: &[usize]) -> Tensor {
    hidden
        .select(0, 0)
        .index_select(0, &index_tensor(rows, hidden.device()))
        .to_kind(Kind::Float)
}

pub(crate) fn unit_rows(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}

pub(crate) fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(
        t.to_kind(Kind::Float)
            .reshape([-1])
            .to_device(tch::Device::Cpu),
    )
    .expect("f32 tensor")
}
