//! horizon-analysis
