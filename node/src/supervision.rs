//! Local supervisors.
