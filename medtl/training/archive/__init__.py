"""The DICOM archive → pretraining-set pipeline, one module per step.

dicom (read a file, pixels → 8-bit), header (what may leave a header; burned-in-text refusals),
deid (the key and keyed hashes), convert (one file → PNGs and its shard record, in a worker),
workers (isolated decoding processes), shards (atomic writes, compaction into the manifest),
ingest (the run), pseudolabel (clusters → labels), pretrain_set (the labelled set as pretraining
splits); demo_archive writes the synthetic archive the demo and the tests use.
"""
