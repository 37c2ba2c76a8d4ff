//! The one PNG writer and the bar chart: a written PNG decodes to the image it was given (RGB and
//! grey), with its directory created and no temp file left; a failed write names the path; bar
//! chart geometry and the font's metrics worked out by hand.

use std::path::{Path, PathBuf};

use foundation::atomic::tmp_path;
use foundation::plot::font::{draw_text, text_height, text_width};
use foundation::plot::{bar_chart, write_bar_chart, write_png, Bar, PngError};
use image::{GrayImage, Rgb, RgbImage};

/// A fresh scratch directory for one test (removed first, so reruns start clean).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("foundation-plot-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn written_pngs_decode_to_the_given_images() {
    let dir = scratch("round-trip");
    let rgb = RgbImage::from_fn(7, 3, |x, y| Rgb([x as u8 * 30, y as u8 * 80, 200]));
    let path = dir.join("a/b/rgb.png");
    write_png(&path, &rgb).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), rgb);
    assert!(!tmp_path(&path).exists());

    let grey = GrayImage::from_fn(4, 5, |x, y| image::Luma([(x * 50 + y) as u8]));
    let path = dir.join("grey.png");
    write_png(&path, &grey).unwrap();
    let back = image::open(&path).unwrap();
    assert_eq!(back.color(), image::ColorType::L8);
    assert_eq!(back.to_luma8(), grey);
}

#[test]
fn a_failed_write_is_an_io_error_naming_the_path() {
    let dir = scratch("fail");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = write_png(&file.join("out.png"), &RgbImage::new(2, 2)).unwrap_err();
    assert!(matches!(err, PngError::Io(_)), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn bar_chart_geometry() {
    // One bar of value 1 (no error bar): the plot spans [0, 1] over x = 270..=670, the bar's row
    // is y = 26..=39, the zero line runs down x = 270 from y = 22 to 55 in a 810 x 66 image.
    let bars = [Bar { label: "a".into(), value: 1.0, se: 0.0 }];
    let img = bar_chart("t", &bars, |v, _| format!("{v}"));
    assert_eq!(img.dimensions(), (260 + 420 + 130, 22 * 3));
    let blue = Rgb([70, 110, 180]);
    assert_eq!(*img.get_pixel(271, 30), blue);
    assert_eq!(*img.get_pixel(670, 39), blue);
    assert_eq!(*img.get_pixel(671, 30), Rgb([255, 255, 255]));
    assert_eq!(*img.get_pixel(670, 40), Rgb([255, 255, 255]));
    assert_eq!(*img.get_pixel(270, 50), Rgb([120, 120, 120]));

    let dir = scratch("bars");
    let path = dir.join("bars.png");
    write_bar_chart(&path, "t", &bars, |v, _| format!("{v}")).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), img);
}

#[test]
fn font_metrics_and_glyph_cells() {
    // Advance 6 font pixels per character, no trailing blank column; 9 rows with descenders.
    assert_eq!(text_width("ab", 2), (2 * 6 - 1) * 2);
    assert_eq!(text_width("", 3), 0);
    assert_eq!(text_height(3), 27);
    // 'l' starts ".##.." on its top row; scale 1 at the origin.
    let mut img = RgbImage::from_pixel(5, 9, Rgb([255, 255, 255]));
    let ink = Rgb([0, 0, 0]);
    draw_text(&mut img, 0, 0, "l", 1, ink);
    let top: Vec<bool> = (0..5).map(|x| *img.get_pixel(x, 0) == ink).collect();
    assert_eq!(top, [false, true, true, false, false]);
}
