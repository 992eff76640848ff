//! The Criterion every bench starts from. Criterion draws its report charts with plotters, which
//! this crate builds without system fonts: the embedded chart font is registered first.

use criterion::Criterion;

pub fn criterion() -> Criterion {
    robo_poet::plot::register_font().expect("the embedded chart font");
    Criterion::default()
}
