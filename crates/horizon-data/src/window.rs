//! Windows of the visual token grids: `size`×`size` blocks numbered row-major, the unit whose
//! information `horizon info` measures (a 2x2 window of LLaVA-1.5's 24x24 grid is the paper's unit).
//!
//! A family whose image becomes one grid (LLaVA-1.5, Qwen2.5-VL) has one [`TokenGrid`]; LLaVA-NeXT
//! (anyres) has two: the base image's grid and the unpadded high-resolution grid, whose rows are each
//! followed by an `image_newline` token that no window holds (docs/information-windows.md).

use anyhow::{bail, Result};

/// One grid of visual tokens inside the prompt's visual token list: token (r, c) of the grid is
/// entry `start + r * stride + c` of the list. `stride > cols` skips tokens that close each row
/// (LLaVA-NeXT's `image_newline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    pub start: usize,
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl TokenGrid {
    /// A `rows × cols` grid that is the whole visual token list, row-major.
    pub fn whole(rows: usize, cols: usize) -> Self {
        Self {
            start: 0,
            rows,
            cols,
            stride: cols,
        }
    }
}

/// `size`×`size` blocks of each visual token grid, numbered row-major on each grid, the grids one
/// after the other (grid 0's windows first). Edge windows of a grid that is not a multiple of
/// `size` are partial (they hold the tokens that exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowGrid {
    pub grids: Vec<TokenGrid>,
    pub size: usize,
}

impl WindowGrid {
    /// Windows of one `grid.0 × grid.1` grid that is the whole visual token list.
    pub fn new(grid: (usize, usize), size: usize) -> Result<Self> {
        Self::of_grids(vec![TokenGrid::whole(grid.0, grid.1)], size)
    }

    /// Windows of several grids of one visual token list.
    pub fn of_grids(grids: Vec<TokenGrid>, size: usize) -> Result<Self> {
        if size == 0 {
            bail!("--window: the window size must be at least 1");
        }
        if let Some(g) = grids.iter().find(|g| g.stride < g.cols) {
            bail!(
                "a token grid of {} columns cannot have a row stride of {}",
                g.cols,
                g.stride
            );
        }
        Ok(Self { grids, size })
    }

    /// Window rows of grid 0 (the only grid of single-grid families).
    pub fn window_rows(&self) -> usize {
        self.grid_window_shape(0).0
    }

    /// Window columns of grid 0.
    pub fn window_cols(&self) -> usize {
        self.grid_window_shape(0).1
    }

    /// (window rows, window cols) of grid `g`.
    pub fn grid_window_shape(&self, g: usize) -> (usize, usize) {
        self.grids.get(g).map_or((0, 0), |t| {
            (t.rows.div_ceil(self.size), t.cols.div_ceil(self.size))
        })
    }

    fn grid_windows(&self, g: usize) -> usize {
        let (r, c) = self.grid_window_shape(g);
        r * c
    }

    pub fn num_windows(&self) -> usize {
        (0..self.grids.len()).map(|g| self.grid_windows(g)).sum()
    }

    /// (grid, index of the window on that grid) of window `w`.
    fn locate(&self, w: usize) -> (usize, usize) {
        let mut first = 0;
        for g in 0..self.grids.len() {
            let n = self.grid_windows(g);
            if w < first + n {
                return (g, w - first);
            }
            first += n;
        }
        panic!("window {w} does not exist ({} windows)", self.num_windows());
    }

    /// The grid window `w` lies on (0 for single-grid families).
    pub fn window_grid(&self, w: usize) -> usize {
        self.locate(w).0
    }

    /// (row, col) of window `w` on its grid's window grid.
    pub fn window_position(&self, w: usize) -> (usize, usize) {
        let (g, i) = self.locate(w);
        let cols = self.grid_window_shape(g).1;
        (i / cols, i % cols)
    }

    /// Indices (into the visual token list) of window `w`, ascending.
    pub fn window_tokens(&self, w: usize) -> Vec<usize> {
        let g = self.grids[self.window_grid(w)];
        let (wr, wc) = self.window_position(w);
        let mut out = Vec::with_capacity(self.size * self.size);
        for r in wr * self.size..((wr + 1) * self.size).min(g.rows) {
            for c in wc * self.size..((wc + 1) * self.size).min(g.cols) {
                out.push(g.start + r * g.stride + c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×3 base grid, then a 3×2 grid whose rows are each closed by one extra token: visual list
    /// entries 0..6 the base, 6..15 the second grid with its closing tokens at 8, 11, 14.
    #[test]
    fn two_grids_with_row_closers() {
        let g = WindowGrid::of_grids(
            vec![
                TokenGrid::whole(2, 3),
                TokenGrid {
                    start: 6,
                    rows: 3,
                    cols: 2,
                    stride: 3,
                },
            ],
            2,
        )
        .unwrap();
        assert_eq!(g.num_windows(), 2 + 2);
        assert_eq!(g.window_tokens(0), vec![0, 1, 3, 4]);
        assert_eq!(g.window_tokens(1), vec![2, 5]);
        assert_eq!((g.window_grid(2), g.window_position(2)), (1, (0, 0)));
        assert_eq!(g.window_tokens(2), vec![6, 7, 9, 10]);
        assert_eq!((g.window_grid(3), g.window_position(3)), (1, (1, 0)));
        assert_eq!(g.window_tokens(3), vec![12, 13]);
        let mut all: Vec<usize> = (0..g.num_windows())
            .flat_map(|w| g.window_tokens(w))
            .collect();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13]);
    }

    #[test]
    fn bad_stride_is_refused() {
        let bad = TokenGrid {
            start: 0,
            rows: 2,
            cols: 3,
            stride: 2,
        };
        assert!(WindowGrid::of_grids(vec![bad], 2).is_err());
    }
}
