//! Figures as PNG: the attribution figure of query, proponents and opponents ([`rows`]). Bar
//! charts, the bitmap font and the one PNG writer are `foundation::plot`'s, re-exported here.

pub mod rows;

pub use foundation::plot::{bar_chart, write_bar_chart, Bar, PngError};
pub use rows::{
    attribution_rows, magnification, rows_geometry, write_attribution_rows, PlotError, RowsGeometry,
    RowsLayout,
};
