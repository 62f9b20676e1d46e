//! Shared helpers for the tests in this package.
