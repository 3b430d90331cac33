//! horizon-plot
