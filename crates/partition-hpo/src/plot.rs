//! Line charts as PNG (the learned rotation range over training), drawn with the `image` crate;
//! bar charts come from `attribution::plot`.
