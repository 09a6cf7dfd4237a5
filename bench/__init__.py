"""The benchmark suite (`make bench` → bench/results.md). See bench/README.md."""
