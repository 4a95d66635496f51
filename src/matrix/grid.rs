//! A value for every (port/protocol, from, to) cell, stored flat: the layout truth tables and
//! observed tables share.

use super::Cell;
use crate::model::{PodId, PodRef, PortProtocol};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid<T> {
    pods: Vec<PodRef>,
    port_protocols: Vec<PortProtocol>,
    values: Vec<T>,
}

impl<T: Clone> Grid<T> {
    /// Every cell set to `fill`.
    pub fn new(pods: Vec<PodRef>, port_protocols: Vec<PortProtocol>, fill: T) -> Self {
        let size = pods.len() * pods.len() * port_protocols.len();
        Grid {
            pods,
            port_protocols,
            values: vec![fill; size],
        }
    }
}

impl<T> Grid<T> {
    pub fn pods(&self) -> &[PodRef] {
        &self.pods
    }

    pub fn port_protocols(&self) -> &[PortProtocol] {
        &self.port_protocols
    }

    fn index(&self, pp_index: usize, from: PodId, to: PodId) -> usize {
        let n = self.pods.len();
        (pp_index * n + from) * n + to
    }

    pub fn get(&self, pp_index: usize, from: PodId, to: PodId) -> &T {
        &self.values[self.index(pp_index, from, to)]
    }

    pub fn set(&mut self, pp_index: usize, from: PodId, to: PodId, value: T) {
        let i = self.index(pp_index, from, to);
        self.values[i] = value;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Every cell with its (port, protocol) index and value, ordered by (port, protocol), then
    /// from, then to.
    pub fn cells(&self) -> impl Iterator<Item = (usize, Cell, &T)> + '_ {
        let n = self.pods.len();
        self.values.iter().enumerate().map(move |(i, value)| {
            let pp_index = i / (n * n);
            let cell = Cell {
                from: (i / n) % n,
                to: i % n,
                port_protocol: self.port_protocols[pp_index],
            };
            (pp_index, cell, value)
        })
    }
}
