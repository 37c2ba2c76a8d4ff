//! The attribution figure (`plot::rows`): geometry worked out by hand for small cases, magnified
//! cells that reproduce their source pixels, background in every gap, a legend with ink in it,
//! row labels, bad inputs refused, and the PNG written atomically.

use attribution::plot::rows::{BACKGROUND, CELL_GAP, GROUP_GAP, MARGIN, ROW_GAP};
use attribution::plot::{
    attribution_rows, magnification, rows_geometry, write_attribution_rows, PlotError, RowsLayout,
};
use image::{Rgb, RgbImage};

/// Synthetic images: distinct values in [-1, 0.8], so no cell pixel is pure white (the background).
fn images(layout: &RowsLayout) -> Vec<f32> {
    let n = layout.rows * layout.columns() * layout.height * layout.width;
    (0..n).map(|i| -1.0 + 1.8 * ((i * 13 + i / 7) % 97) as f32 / 96.0).collect()
}

const TWO_BY_TWO: RowsLayout = RowsLayout { rows: 2, k: 2, height: 14, width: 14 };

fn is_background_block(img: &RgbImage, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>) -> bool {
    ys.clone().all(|y| xs.clone().all(|x| *img.get_pixel(x, y) == BACKGROUND))
}

#[test]
fn magnification_is_the_largest_integer_factor_within_56_pixels() {
    assert_eq!(magnification(14, 14), 4);
    assert_eq!(magnification(28, 28), 2);
    assert_eq!(magnification(8, 8), 7);
    assert_eq!(magnification(14, 28), 2);
    assert_eq!(magnification(64, 64), 1);
    assert_eq!(magnification(300, 2), 1);
}

#[test]
fn geometry_of_a_small_case_matches_the_hand_computed_layout() {
    // 14x14 images x 4 = 56-pixel cells. Text is 5x7 glyphs with a 6-pixel advance at scale 2:
    // "query" is 58 px wide, "proponents (top 2)" 214 px, "opponents" 106 px. Each group is as
    // wide as the wider of its cells and its name.
    //   x: margin 8 | query 8..64 (slot 58) | gap 24 | proponents at 90 and 150 (slot 214) | gap 24 |
    //      opponents at 328 and 388 (slot 116) | margin 8  => width 452
    //   y: margin 8 | header 32 | row 40..96 | gap 8 | row 104..160 | margin 8  => height 168
    let g = rows_geometry(&TWO_BY_TWO, &[]).unwrap();
    assert_eq!(g.magnify, 4);
    assert_eq!((g.cell_width, g.cell_height), (56, 56));
    assert_eq!(g.column_x, vec![8, 90, 150, 328, 388]);
    assert_eq!(g.row_y, vec![40, 104]);
    assert_eq!(g.headers, vec![(8, 58), (90, 214), (328, 106)]);
    assert_eq!((g.width, g.height), (452, 168));
    let img = attribution_rows(&images(&TWO_BY_TWO), &TWO_BY_TWO, &[]).unwrap();
    assert_eq!(img.dimensions(), (452, 168));

    // 28x28 images x 2 = 56-pixel cells too; with k = 6 the proponents' cells (6 x 56 + 5 x 4 = 356)
    // are wider than their name.
    let six = RowsLayout { rows: 3, k: 6, height: 28, width: 28 };
    let g = rows_geometry(&six, &[]).unwrap();
    assert_eq!(g.magnify, 2);
    let prop0 = 8 + 58 + 24;
    let opp0 = prop0 + 356 + 24;
    assert_eq!(g.column_x[1], prop0);
    assert_eq!(g.column_x[7], opp0);
    assert_eq!(g.width, opp0 + 356 + 8);
    assert_eq!(g.height, 8 + 32 + 3 * 56 + 2 * 8 + 8);

    // k = 0: the queries alone, one header.
    let alone = RowsLayout { rows: 1, k: 0, height: 14, width: 14 };
    let g = rows_geometry(&alone, &[]).unwrap();
    assert_eq!(g.column_x, vec![8]);
    assert_eq!(g.headers.len(), 1);
    assert_eq!((g.width, g.height), (8 + 58 + 8, 8 + 32 + 56 + 8));
}

#[test]
fn magnified_cells_reproduce_their_source_pixels() {
    for layout in [TWO_BY_TWO, RowsLayout { rows: 2, k: 1, height: 5, width: 3 }] {
        let src = images(&layout);
        let img = attribution_rows(&src, &layout, &[]).unwrap();
        let g = rows_geometry(&layout, &[]).unwrap();
        let m = g.magnify as usize;
        let (h, w) = (layout.height, layout.width);
        for (n, cell) in src.chunks_exact(h * w).enumerate() {
            let (x0, y0) = (g.column_x[n % layout.columns()], g.row_y[n / layout.columns()]);
            for y in 0..h * m {
                for x in 0..w * m {
                    let v = data::to_u8(cell[(y / m) * w + x / m]);
                    assert_eq!(
                        *img.get_pixel(x0 + x as u32, y0 + y as u32),
                        Rgb([v, v, v]),
                        "cell {n}, ({x}, {y})"
                    );
                }
            }
        }
    }
}

#[test]
fn gaps_between_cells_groups_and_rows_are_background() {
    let img = attribution_rows(&images(&TWO_BY_TWO), &TWO_BY_TWO, &[]).unwrap();
    let g = rows_geometry(&TWO_BY_TWO, &[]).unwrap();
    let cells_y = g.row_y[0]..g.row_y[1] + g.cell_height;
    let end = |c: usize| g.column_x[c] + g.cell_width;
    // Between the query and the proponents, and between proponents and opponents: the wide gap.
    assert!(g.column_x[1] - end(0) >= GROUP_GAP);
    assert!(is_background_block(&img, end(0)..g.column_x[1], cells_y.clone()));
    assert!(g.column_x[3] - end(2) >= GROUP_GAP);
    assert!(is_background_block(&img, end(2)..g.column_x[3], cells_y.clone()));
    // Between two proponents and between two opponents: the narrow gap.
    assert_eq!(g.column_x[2] - end(1), CELL_GAP);
    assert!(is_background_block(&img, end(1)..g.column_x[2], cells_y.clone()));
    assert_eq!(g.column_x[4] - end(3), CELL_GAP);
    assert!(is_background_block(&img, end(3)..g.column_x[4], cells_y.clone()));
    // Between the rows, and the margins.
    assert_eq!(g.row_y[1] - (g.row_y[0] + g.cell_height), ROW_GAP);
    assert!(is_background_block(&img, 0..g.width, g.row_y[0] + g.cell_height..g.row_y[1]));
    assert!(is_background_block(&img, 0..MARGIN, 0..g.height));
    assert!(is_background_block(&img, g.width - MARGIN..g.width, 0..g.height));
    assert!(is_background_block(&img, 0..g.width, 0..MARGIN));
    assert!(is_background_block(&img, 0..g.width, g.height - MARGIN..g.height));
}

#[test]
fn the_legend_strip_names_each_group_in_its_own_colour() {
    let img = attribution_rows(&images(&TWO_BY_TWO), &TWO_BY_TWO, &[]).unwrap();
    let g = rows_geometry(&TWO_BY_TWO, &[]).unwrap();
    let strip = MARGIN..g.row_y[0];
    let mut colours = Vec::new();
    for &(x, w) in &g.headers {
        let ink: Vec<Rgb<u8>> = strip
            .clone()
            .flat_map(|y| (x..x + w).map(move |x| (x, y)))
            .map(|(x, y)| *img.get_pixel(x, y))
            .filter(|p| *p != BACKGROUND)
            .collect();
        assert!(ink.len() > 50, "header at x = {x} has {} ink pixels", ink.len());
        colours.push(ink[0]);
    }
    assert!(colours[0] != colours[1] && colours[1] != colours[2] && colours[0] != colours[2]);
    // The strip is above the cells: nothing of it reaches the first row.
    assert!(g.row_y[0] >= MARGIN + 20);
}

#[test]
fn row_labels_sit_left_of_the_query_and_shift_the_columns() {
    let labels = vec!["q0\ndigit 1".to_string(), "q1".to_string()];
    let plain = rows_geometry(&TWO_BY_TWO, &[]).unwrap();
    let g = rows_geometry(&TWO_BY_TWO, &labels).unwrap();
    // Widest line "digit 1": 7 glyphs -> (7 x 6 - 1) x 2 = 82 px, then a 12 px gap.
    let shift = 82 + 12;
    assert_eq!(g.column_x, plain.column_x.iter().map(|x| x + shift).collect::<Vec<_>>());
    assert_eq!(g.width, plain.width + shift);
    assert_eq!(g.height, plain.height);
    let img = attribution_rows(&images(&TWO_BY_TWO), &TWO_BY_TWO, &labels).unwrap();
    for &y in &g.row_y {
        let ys = y..y + g.cell_height;
        assert!(!is_background_block(&img, MARGIN..MARGIN + 82, ys.clone()), "label of the row at y = {y}");
        assert!(is_background_block(&img, MARGIN + 82..g.column_x[0], ys));
    }
}

#[test]
fn bad_inputs_are_refused_with_one_line_errors() {
    let src = images(&TWO_BY_TWO);
    let err = attribution_rows(&src[1..], &TWO_BY_TWO, &[]).unwrap_err();
    assert!(matches!(err, PlotError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("expected"), "{err}");
    let three = vec![String::new(); 3];
    let err = attribution_rows(&src, &TWO_BY_TWO, &three).unwrap_err();
    assert!(err.to_string().contains("3 row labels for 2 rows"), "{err}");
    for bad in [RowsLayout { height: 0, ..TWO_BY_TWO }, RowsLayout { rows: 0, ..TWO_BY_TWO }] {
        let err = attribution_rows(&[], &bad, &[]).unwrap_err();
        assert!(err.to_string().contains("must all be positive"), "{err}");
    }
    let huge = RowsLayout { rows: 1, k: 1 << 20, height: 14, width: 14 };
    let err = rows_geometry(&huge, &[]).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn the_png_is_written_atomically_and_decodes_to_the_rendered_image() {
    let dir = std::env::temp_dir().join(format!("attribution-plot-rows-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("nested/rows.png");
    let src = images(&TWO_BY_TWO);
    let labels = vec!["q0".to_string(), "q1".to_string()];
    write_attribution_rows(&path, &src, &TWO_BY_TWO, &labels).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    assert_eq!(back, attribution_rows(&src, &TWO_BY_TWO, &labels).unwrap());
    let names: Vec<_> =
        std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("rows.png")], "no temp file left behind");
    // A refused figure leaves the existing file as it was.
    assert!(write_attribution_rows(&path, &src[1..], &TWO_BY_TWO, &labels).is_err());
    assert_eq!(image::open(&path).unwrap().to_rgb8(), back);
    std::fs::remove_dir_all(&dir).unwrap();
}
