//! Data sources: any data set in the `uci_datasets` layout (by name or folder), plain CSV files
//! (header optional, target by position or name), one-line errors for bad files, the real shared
//! data sets; and the seeded streams of `gp::rng`.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use gp::rng::{stream, GpStream};
use gp::uci::{self, TargetColumn};
use gp::GpError;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("igp-sources-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_gz(path: &Path, text: &str) {
    let mut enc = GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
}

fn one_line(err: &GpError) -> String {
    let text = err.to_string();
    assert!(!text.contains('\n'), "multi-line error: {text}");
    text
}

/// 20 rows `x0, x1, y` with y = 10 x0 + x1, and a mask whose split k tests rows 2k and 2k + 1.
fn toy_layout(root: &Path, name: &str, gz: bool) {
    let folder = root.join("uci").join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let data: String = (0..20).map(|i| format!("{i},{},{}\n", i * i, 10 * i + i * i)).collect();
    let mask: String = (0..20)
        .map(|i| (0..10).map(|k| if i / 2 == k { "1" } else { "0" }).collect::<Vec<_>>().join(",") + "\n")
        .collect();
    if gz {
        write_gz(&folder.join("data.csv.gz"), &data);
        write_gz(&folder.join("test_mask.csv.gz"), &mask);
    } else {
        std::fs::write(folder.join("data.csv"), data).unwrap();
        std::fs::write(folder.join("test_mask.csv"), mask).unwrap();
    }
}

#[test]
fn any_data_set_in_the_uci_layout_loads_by_name_or_folder() {
    let root = temp_dir("layout");
    toy_layout(&root, "toy", true);
    toy_layout(&root, "plain", false);
    for name in ["toy", "plain"] {
        let data = uci::load(name, Some(&root)).unwrap();
        assert_eq!(data.name, name);
        assert_eq!((data.x.nrows(), data.x.ncols()), (20, 2));
        assert_eq!(data.y[7], 70.0 + 49.0);
        let split = data.split(3).unwrap();
        assert_eq!(split.y_test, vec![60.0 + 36.0, 70.0 + 49.0]);
        assert_eq!(split.y_train.len(), 18);
        // The same folder by path, through the spec resolver.
        let folder = root.join("uci").join(name);
        let by_path = uci::resolve(folder.to_str().unwrap(), None, &TargetColumn::Last).unwrap();
        assert_eq!((by_path.x, by_path.y, by_path.test_mask), (data.x, data.y, data.test_mask));
    }
    let err = uci::load("protein", Some(&root)).unwrap_err();
    let text = one_line(&err);
    assert!(matches!(err, GpError::UnknownDataset(_)), "{text}");
    assert!(text.contains("protein") && text.contains("available: plain, toy"), "{text}");
    let err =
        uci::resolve(root.join("uci/toy").to_str().unwrap(), None, &TargetColumn::Index(0)).unwrap_err();
    assert!(one_line(&err).contains("CSV files only"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn plain_csv_with_or_without_header_and_any_target_column() {
    let dir = temp_dir("csv");
    let with_header = dir.join("houses.csv");
    let rows: String = (0..25).map(|i| format!("{i}, {}, {}\n", 2 * i, 100 + i)).collect();
    std::fs::write(&with_header, format!("rooms,\"area\",price\n{rows}")).unwrap();
    let no_header = dir.join("bare.csv.gz");
    write_gz(&no_header, &rows);

    let last = uci::load_csv(&with_header, &TargetColumn::Last).unwrap();
    assert_eq!((last.name.as_str(), last.x.nrows(), last.x.ncols()), ("houses", 25, 2));
    assert_eq!(last.y[4], 104.0);
    let by_name = uci::load_csv(&with_header, &"area".parse().unwrap()).unwrap();
    assert_eq!(by_name.y[4], 8.0);
    // The inputs are the other columns, in order.
    assert_eq!((by_name.x[(4, 0)], by_name.x[(4, 1)]), (4.0, 104.0));
    let by_index = uci::resolve(no_header.to_str().unwrap(), None, &"0".parse().unwrap()).unwrap();
    assert_eq!(by_index.y[4], 4.0);
    assert_eq!((by_index.x[(4, 0)], by_index.x[(4, 1)]), (8.0, 104.0));
    // Fixed splits without random draws: split k tests the rows i with i % 10 == k.
    let split = last.split(2).unwrap();
    assert_eq!(split.y_test, vec![102.0, 112.0, 122.0]);
    assert_eq!(split.y_train.len(), 22);
    for k in 0..10 {
        assert!(last.split(k).is_ok());
    }

    // Bad files and bad target columns: one line naming the file and the problem.
    let cases: [(&str, &str, &str); 6] = [
        ("ragged.csv", "1,2,3\n4,5\n", "line 2: expected 3 columns, found 2"),
        ("word.csv", "a,b,c\n1,2,3\n4,x,6\n", "line 3: not a number: 'x'"),
        ("nan.csv", "1,2,3\n4,NaN,6\n", "non-finite value"),
        ("inf.csv", "1,2,3\n4,5,inf\n", "line 2"),
        ("empty.csv", "\n\n", "no data rows"),
        ("header-only.csv", "a,b\n", "no data rows"),
    ];
    for (file, text, needle) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let err = uci::load_csv(&path, &TargetColumn::Last).unwrap_err();
        let msg = one_line(&err);
        assert!(msg.contains(file) && msg.contains(needle), "{file}: '{msg}' lacks '{needle}'");
    }
    for (target, needle) in [
        (TargetColumn::Name("size".into()), "no column 'size' (columns: rooms, area, price)"),
        (TargetColumn::Index(3), "target column 3 out of range 0..3"),
    ] {
        let err = uci::load_csv(&with_header, &target).unwrap_err();
        assert!(one_line(&err).contains(needle), "{err}");
    }
    let err = uci::load_csv(&no_header, &TargetColumn::Name("price".into())).unwrap_err();
    assert!(one_line(&err).contains("no header line"), "{err}");
    let err = uci::load_csv(&dir.join("absent.csv"), &TargetColumn::Last).unwrap_err();
    assert!(matches!(err, GpError::Io { .. }) && one_line(&err).contains("absent.csv"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The real data sets, from `$SHARED_DATA_DIR` or `../shared/data` next to the repository. Fails
/// (does not skip) when they are absent.
#[test]
fn shared_data_sets_have_their_published_sizes() {
    let dir = uci::shared_data_dir()
        .filter(|d| d.join("uci/pol/data.csv.gz").is_file())
        .expect("shared data not found: set SHARED_DATA_DIR to the folder holding uci/{pol,elevators,bike}/");
    for (name, n, d) in [("pol", 15000, 26), ("elevators", 16599, 18), ("bike", 17379, 17)] {
        let data = uci::load(name, Some(&dir)).unwrap();
        assert_eq!((data.x.nrows(), data.x.ncols(), data.y.len()), (n, d, n), "{name}");
        let split = data.split(0).unwrap();
        assert_eq!(split.y_train.len() + split.y_test.len(), n, "{name}");
        // The 90/10 masks of the collection.
        assert!(split.y_test.len() * 10 >= n - 10 && split.y_test.len() * 10 <= n + 10, "{name}");
    }
    // The embedded subset is the first 600 rows of the real pol, split masks included.
    let real = uci::load("pol", Some(&dir)).unwrap();
    let embedded = uci::load("pol", None).unwrap();
    for i in [0, 299, 599] {
        assert_eq!(real.y[i], embedded.y[i]);
        assert_eq!(real.x[(i, 25)], embedded.x[(i, 25)]);
        assert_eq!(real.test_mask[i], embedded.test_mask[i]);
    }
}

#[test]
fn gp_streams_keep_the_numbers_of_stored_runs() {
    // Probes on ChaCha's default stream, solver mini-batches on stream 1, the subsample centre on 2.
    let seed = 12345;
    let mut old_probes = ChaCha8Rng::seed_from_u64(seed);
    let mut probes = stream(seed, GpStream::Probes);
    for (purpose, id) in [(GpStream::SolverBatches, 1), (GpStream::Subsample, 2)] {
        let mut old = ChaCha8Rng::seed_from_u64(seed);
        old.set_stream(id);
        let mut new = stream(seed, purpose);
        assert!((0..16).all(|_| old.next_u64() == new.next_u64()), "{purpose:?}");
    }
    assert!((0..16).all(|_| old_probes.next_u64() == probes.next_u64()));
    assert_ne!(stream(seed, GpStream::Probes).next_u64(), stream(seed, GpStream::Subsample).next_u64());
}
