//! One integration-test binary (nalgebra style); each concern in its own module.

mod autodiff_checks;
mod cli;
mod common;
mod cuda_checks;
mod data_readers;
mod fault_injection;
mod geometry_checks;
mod guard_rails;
mod hessian_checks;
mod li_et_al_checks;
mod linalg_checks;
mod margins_checks;
mod model_files;
mod mpi_checks;
mod network_checks;
mod network_cli;
mod plot_checks;
mod sam_checks;
mod sample_size_checks;
mod sphere_checks;
mod theory_checks;
mod training;
mod wide_checks;
