"""The DICOM archive → pretraining-set pipeline: read DICOM (dicom), de-identify and convert to 8-bit shards
(ingest), cluster into pseudo-labels (pseudolabel), load the labelled set for pretraining (pretrain_set);
demo_archive writes the synthetic archive the demo and the tests use."""
