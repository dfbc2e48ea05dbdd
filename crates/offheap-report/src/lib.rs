//! Renders a [`offheap_analysis::Model`] into every output format.
//! A reporter renders the Model and never recomputes a figure.
