//! The teacher file: round trip, and one clear error for another ensemble size, class count,
//! input count, NaN logits or a file of another kind.

use endd::train::{load_teacher, save_teacher, Teacher};
use foundation::tensor_file::{self, NamedTensor};

fn teacher() -> Teacher {
    let (n, m, k) = (5, 3, 4);
    Teacher { logits: (0..n * m * k).map(|i| (i as f32 * 0.37).sin()).collect(), n, members: m, classes: k }
}

fn one_line_error(r: Result<Teacher, endd::EndError>, contains: &str) {
    let msg = r.expect_err("must be refused").to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains(contains), "{msg:?} lacks {contains:?}");
    assert!(msg.contains("teacher.safetensors"), "{msg:?} does not name the file");
}

#[test]
fn teacher_file_round_trip_and_refusals() {
    let dir = std::env::temp_dir().join(format!("endd-teacher-{}", std::process::id()));
    let path = dir.join("teacher.safetensors");
    let t = teacher();
    save_teacher(&path, &t).expect("save");
    assert_eq!(load_teacher(&path, 3, 4, 5).expect("load"), t);
    one_line_error(load_teacher(&path, 10, 4, 5), "3 ensemble members, expected 10");
    one_line_error(load_teacher(&path, 3, 10, 5), "4 classes, expected 10");
    one_line_error(load_teacher(&path, 3, 4, 6), "5 inputs, expected 6");

    let mut bad = t.clone();
    bad.logits[7] = f32::NAN;
    save_teacher(&path, &bad).expect("save");
    one_line_error(load_teacher(&path, 3, 4, 5), "non-finite");

    // A tensor file of another kind.
    tensor_file::save(&path, "other", &0u32, &[NamedTensor::f32("x", vec![1], vec![1.0])]).expect("save");
    one_line_error(load_teacher(&path, 3, 4, 5), "endd-teacher");
    std::fs::write(&path, b"not a tensor file").expect("write");
    one_line_error(load_teacher(&path, 3, 4, 5), "endd-teacher");
    let _ = std::fs::remove_dir_all(&dir);
}
