//! `.npy` score matrices (f32, C order), written atomically.

use std::path::Path;

use npyz::WriterBuilder;

/// Write a row-major f32 matrix `[rows, cols]` as `.npy` (temp file + rename).
pub fn write_matrix(path: &Path, data: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    assert_eq!(data.len(), rows * cols);
    foundation::atomic::write_atomic_with(
        path,
        |tmp| {
            let file = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            let mut w = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&[rows as u64, cols as u64])
                .writer(file)
                .begin_nd()?;
            w.extend(data.iter().copied())?;
            w.finish()
        },
        |_, e| e,
    )
}

/// Read a 2-D f32 `.npy` file: (data, rows, cols).
pub fn read_matrix(path: &Path) -> std::io::Result<(Vec<f32>, usize, usize)> {
    let bytes = std::fs::read(path)?;
    let npy = npyz::NpyFile::new(&bytes[..])?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: expected a 2-D array, found shape {shape:?}", path.display()),
        ));
    }
    let data: Vec<f32> = npy.into_vec()?;
    Ok((data, shape[0] as usize, shape[1] as usize))
}
