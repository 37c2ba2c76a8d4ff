//! `timewarp`: MD references, MH sampling and reports for 2-D Lennard-Jones clusters.

fn main() {
    foundation::cli::keep_freed_memory();
}
