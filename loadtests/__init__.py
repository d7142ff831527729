"""Load tests and benchmarks. Benchmarks write their figures (JSON + markdown) under docs/."""
