"""One prepared GPU run of the trainer and serving benchmarks (``bench/gpu/run.sh``; see bench/README.md)."""
