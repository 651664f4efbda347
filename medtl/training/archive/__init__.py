"""The DICOM archive → pretraining-set pipeline, one module per step.

dicom (read a file, pixels → 8-bit), header (what may leave a header; burned-in-text refusals),
deid (the key and keyed hashes), ocr (offline text detection and recognition), text_rules (which
read text identifies someone), pixel_scan (the burned-in text scan of each image), convert (one
file → PNGs and its shard record, in a worker), workers (isolated decoding processes), shards
(atomic writes, compaction into the manifest), ingest (the run), forget (removing a source from an
output), pseudolabel (clusters → labels), pretrain_set (the labelled set as pretraining splits);
demo_archive writes the synthetic archive the demo and the tests use, text_set the generated files
with identifiers in their pixels that test and measure the scan.
"""
