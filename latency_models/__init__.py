"""Device-measured latency tables shipped with hwprune (JSON with provenance), package data of
``hwprune.latency_models``; only hwprune/latency/shipped.py reads them, and
benchmarks/make_shipped_table.py writes them."""
