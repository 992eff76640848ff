//! The named tensor table: every buffer a model needs, declared up front (llm.c style).
//!
//! Parameters, gradients, optimizer state, saved activations and workspace are all entries of one
//! table with a name, a category, a shape and a dtype. Backends allocate exactly the table, once,
//! so the table IS the memory accounting: its byte totals per category are exact.

use std::collections::HashMap;
use std::fmt;

/// What a buffer is for; the rows of the memory report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Trainable weights.
    Parameter,
    /// Gradients of the parameters.
    Gradient,
    /// AdamW first and second moments.
    OptimizerState,
    /// Forward results kept for the backward pass (including attention probabilities).
    Activation,
    /// Gradients of activations and scratch space, live only within one step.
    Workspace,
    /// Token ids and targets fed to the model.
    Input,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Parameter,
        Category::Gradient,
        Category::OptimizerState,
        Category::Activation,
        Category::Workspace,
        Category::Input,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Category::Parameter => "parameters",
            Category::Gradient => "gradients",
            Category::OptimizerState => "optimizer state",
            Category::Activation => "saved activations",
            Category::Workspace => "workspace",
            Category::Input => "inputs",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        4
    }
}

/// Index of a tensor in its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

impl TensorId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub category: Category,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// For parameters: whether AdamW applies weight decay (matrices yes; biases, norms no).
    pub decay: bool,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// A shape printed as `[4, 128, 256]`.
pub struct Shape<'a>(pub &'a [usize]);

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[derive(Clone, Debug, Default)]
pub struct TensorTable {
    specs: Vec<TensorSpec>,
    by_name: HashMap<String, TensorId>,
}

impl TensorTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, spec: TensorSpec) -> TensorId {
        assert!(
            !self.by_name.contains_key(&spec.name),
            "tensor table: duplicate name {}",
            spec.name
        );
        assert!(
            spec.numel() > 0,
            "tensor table: {} has an empty shape {}",
            spec.name,
            Shape(&spec.shape)
        );
        let id = TensorId(self.specs.len() as u32);
        self.by_name.insert(spec.name.clone(), id);
        self.specs.push(spec);
        id
    }

    /// Adds an f32 tensor.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        category: Category,
        shape: &[usize],
    ) -> TensorId {
        self.push(TensorSpec {
            name: name.into(),
            category,
            shape: shape.to_vec(),
            dtype: DType::F32,
            decay: false,
        })
    }

    /// Adds a u32 tensor (token ids, targets).
    pub fn add_u32(
        &mut self,
        name: impl Into<String>,
        category: Category,
        shape: &[usize],
    ) -> TensorId {
        self.push(TensorSpec {
            name: name.into(),
            category,
            shape: shape.to_vec(),
            dtype: DType::U32,
            decay: false,
        })
    }

    /// Adds a parameter with its gradient ("grad.<name>") and AdamW moments ("adam_m.<name>",
    /// "adam_v.<name>"). Returns the parameter's id; the others are found with `grad_of` etc.
    pub fn add_param(&mut self, name: &str, shape: &[usize], decay: bool) -> ParamIds {
        let param = self.push(TensorSpec {
            name: name.to_string(),
            category: Category::Parameter,
            shape: shape.to_vec(),
            dtype: DType::F32,
            decay,
        });
        let grad = self.add(format!("grad.{name}"), Category::Gradient, shape);
        let m = self.add(format!("adam_m.{name}"), Category::OptimizerState, shape);
        let v = self.add(format!("adam_v.{name}"), Category::OptimizerState, shape);
        ParamIds { param, grad, m, v }
    }

    pub fn spec(&self, id: TensorId) -> &TensorSpec {
        &self.specs[id.index()]
    }
    pub fn shape(&self, id: TensorId) -> &[usize] {
        &self.specs[id.index()].shape
    }
    pub fn name(&self, id: TensorId) -> &str {
        &self.specs[id.index()].name
    }
    pub fn numel(&self, id: TensorId) -> usize {
        self.specs[id.index()].numel()
    }
    pub fn get(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }
    pub fn len(&self) -> usize {
        self.specs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (TensorId, &TensorSpec)> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, s)| (TensorId(i as u32), s))
    }

    /// Exact bytes per category, in `Category::ALL` order.
    pub fn bytes_by_category(&self) -> Vec<(Category, usize)> {
        Category::ALL
            .iter()
            .map(|&c| {
                let b = self
                    .specs
                    .iter()
                    .filter(|s| s.category == c)
                    .map(|s| s.bytes())
                    .sum();
                (c, b)
            })
            .collect()
    }

    pub fn total_bytes(&self) -> usize {
        self.specs.iter().map(|s| s.bytes()).sum()
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.specs
            .iter()
            .filter(|s| s.category == Category::Parameter)
            .map(|s| s.numel())
            .sum()
    }
}

/// The four buffers that belong to one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamIds {
    pub param: TensorId,
    pub grad: TensorId,
    pub m: TensorId,
    pub v: TensorId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_accounts_bytes_per_category() {
        let mut t = TensorTable::new();
        let w = t.add_param("w", &[3, 5], true);
        t.add("act", Category::Activation, &[2, 7]);
        t.add_u32("tokens", Category::Input, &[4]);
        assert_eq!(t.shape(w.param), &[3, 5]);
        assert_eq!(t.name(w.grad), "grad.w");
        assert_eq!(t.get("adam_v.w"), Some(w.v));
        let by = t.bytes_by_category();
        assert_eq!(by[0], (Category::Parameter, 60));
        assert_eq!(by[1], (Category::Gradient, 60));
        assert_eq!(by[2], (Category::OptimizerState, 120));
        assert_eq!(by[3], (Category::Activation, 56));
        assert_eq!(by[5], (Category::Input, 16));
        assert_eq!(t.total_bytes(), 60 + 60 + 120 + 56 + 16);
        assert_eq!(t.parameter_count(), 15);
        assert_eq!(Shape(&[4, 128]).to_string(), "[4, 128]");
    }
}
