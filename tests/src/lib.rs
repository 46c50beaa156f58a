//! Cross-process end-to-end tests; see tests/tests/.
