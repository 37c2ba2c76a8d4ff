//! The endd crate's integration tests as one test binary (each test binary is a full link of the
//! workspace's dependencies).

mod experiment;
mod losses;
mod metrics;
mod teacher;
mod training;
mod uncertainty;
