//! Integration tests (toolkit lands next).
