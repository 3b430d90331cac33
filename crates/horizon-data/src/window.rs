//! Windows of the visual token grid: `size`×`size` blocks numbered row-major, the unit whose
//! information `horizon info` measures (a 2x2 window of LLaVA-1.5's 24x24 grid is the paper's unit).

use anyhow::{bail, Result};

/// `size`×`size` blocks of the visual token grid, numbered row-major. Edge windows of a grid that is
/// not a multiple of `size` are partial (they hold the tokens that exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGrid {
    pub grid_rows: usize,
    pub grid_cols: usize,
    pub size: usize,
}

impl WindowGrid {
    pub fn new(grid: (usize, usize), size: usize) -> Result<Self> {
        if size == 0 {
            bail!("--window: the window size must be at least 1");
        }
        Ok(Self {
            grid_rows: grid.0,
            grid_cols: grid.1,
            size,
        })
    }

    pub fn window_rows(&self) -> usize {
        self.grid_rows.div_ceil(self.size)
    }

    pub fn window_cols(&self) -> usize {
        self.grid_cols.div_ceil(self.size)
    }

    pub fn num_windows(&self) -> usize {
        self.window_rows() * self.window_cols()
    }

    /// (row, col) of window `w` on the window grid.
    pub fn window_position(&self, w: usize) -> (usize, usize) {
        (w / self.window_cols(), w % self.window_cols())
    }

    /// Raster indices (into the visual token list) of window `w`, ascending.
    pub fn window_tokens(&self, w: usize) -> Vec<usize> {
        let (wr, wc) = self.window_position(w);
        let mut out = Vec::with_capacity(self.size * self.size);
        for r in wr * self.size..((wr + 1) * self.size).min(self.grid_rows) {
            for c in wc * self.size..((wc + 1) * self.size).min(self.grid_cols) {
                out.push(r * self.grid_cols + c);
            }
        }
        out
    }
}
